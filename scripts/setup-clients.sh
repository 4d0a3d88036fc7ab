#!/usr/bin/env bash
# Creates the Python virtual environment holding the real API clients (openai, ollama, anthropic,
# httpx) that the server tests drive `exo serve` with, at $EXO_DEV_HOME/venv-clients (default
# ~/.cache/exo-dev/venv-clients), from tests/clients/requirements.txt.
#
# Idempotent and fast: a stamp file in the venv holds the sha256 of requirements.txt; when it
# matches and the packages import, nothing is done. The clients are pure-Python wheels, so a fresh
# install takes seconds.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dev_home=${EXO_DEV_HOME:-$HOME/.cache/exo-dev}
venv=$dev_home/venv-clients
req=$root/tests/clients/requirements.txt
stamp=$venv/.requirements.sha256
python=${PYTHON:-python3}
imports='import openai, ollama, anthropic, httpx'

want=$(sha256sum "$req" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "$imports" 2>/dev/null; then
  echo "setup-clients: $venv is up to date"
  exit 0
fi

mkdir -p "$dev_home"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup-clients: creating $venv"
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
"$venv/bin/python" -c "$imports"
echo "$want" >"$stamp"
echo "setup-clients: ready: $venv"
