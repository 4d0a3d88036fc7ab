#!/usr/bin/env bash
# Creates the Python virtual environment that holds exo's reference implementations (llama.cpp via
# llama-cpp-python, Hugging Face transformers + torch, sentence-transformers, gguf, jinja2) at
# $EXO_DEV_HOME/venv (default ~/.cache/exo-dev/venv) from tests/reference/requirements.txt. Used to
# regenerate the test fixtures (tests/reference/regenerate.sh) and to run the peer benchmarks.
#
# Idempotent: a stamp file in the venv holds the sha256 of requirements.txt; when it matches and
# the packages import, nothing is done. llama-cpp-python is compiled from source for this CPU
# (CMAKE_ARGS=-DGGML_NATIVE=ON; 10-20 minutes on 2 cores, cached by pip afterwards). torch comes
# from the PyTorch CPU index when that index is reachable, else from PyPI.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dev_home=${EXO_DEV_HOME:-$HOME/.cache/exo-dev}
venv=$dev_home/venv
req=$root/tests/reference/requirements.txt
stamp=$venv/.requirements.sha256
python=${PYTHON:-python3}
torch_index=https://download.pytorch.org/whl/cpu

want=$(sha256sum "$req" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
  "$venv/bin/python" -c 'import llama_cpp, llama_cpp.server.app, torch, transformers, sentence_transformers, gguf, jinja2, numpy' 2>/dev/null; then
  echo "setup-reference: $venv is up to date"
  exit 0
fi

mkdir -p "$dev_home"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup-reference: creating $venv"
  "$python" -m venv "$venv"
fi

reachable() {
  "$venv/bin/python" - "$1" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=10).close()
PY
}

extra=()
if reachable "$torch_index/"; then
  extra=(--extra-index-url "$torch_index")
else
  echo "setup-reference: $torch_index is not reachable; torch comes from PyPI"
fi

echo "setup-reference: installing $req (llama-cpp-python compiles from source: 10-20 minutes)"
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" "$venv/bin/python" -m pip install ${extra[@]+"${extra[@]}"} -r "$req"
"$venv/bin/python" -c 'import llama_cpp, llama_cpp.server.app, torch, transformers, sentence_transformers, gguf, jinja2, numpy'
echo "$want" >"$stamp"
echo "setup-reference: ready: $venv"
