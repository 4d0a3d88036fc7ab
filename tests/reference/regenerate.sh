#!/usr/bin/env bash
# Regenerates the reference fixtures under tests/fixtures/ with the reference venv
# (scripts/setup-reference.sh) and the models from `scripts/fetch-models.sh all`.
#
# Usage: tests/reference/regenerate.sh [STEP...]
#   STEP is a generator's name without gen_ and .py (llamacpp, transformers, chat_templates,
#   hf_tiny, ...). Default: every tests/reference/gen_*.py, llamacpp first and transformers second
#   (the transformers fixtures take their prompts from the llama.cpp ones), the rest by name.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
py=${EXO_DEV_HOME:-$HOME/.cache/exo-dev}/venv/bin/python
if [ ! -x "$py" ]; then
  echo "regenerate: no reference venv at $py; run scripts/setup-reference.sh first" >&2
  exit 1
fi

cd "$here"
steps=("$@")
if [ ${#steps[@]} -eq 0 ]; then
  steps=(llamacpp transformers)
  for f in gen_*.py; do
    s=${f#gen_}
    s=${s%.py}
    case $s in llamacpp | transformers) ;; *) steps+=("$s") ;; esac
  done
fi

total=$SECONDS
for step in "${steps[@]}"; do
  script=gen_${step}.py
  if [ ! -f "$script" ]; then
    echo "regenerate: no $here/$script" >&2
    exit 2
  fi
  echo "== $script"
  start=$SECONDS
  "$py" "$script"
  echo "== $script: $((SECONDS - start))s"
done
echo "regenerate: done in $((SECONDS - total))s; tests/fixtures is $(du -sh "$here/../fixtures" | cut -f1)"
