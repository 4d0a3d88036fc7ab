#!/bin/sh
# Builds exo and the GPU-vs-CPU test with the cuda feature and packs what a lent GPU machine
# needs into DIR (default .gpu): the two binaries (xz), bench/ and tests/gpu/ scripts, the gguf
# wheel, a tokenizer-only GGUF for random-weight models, and llama.cpp's source for the peer.
#
#   tests/gpu/pack.sh [DIR]     then, on the device:  sh DIR/check.sh  /  sh DIR/cuda_vs_llamacpp.sh
#
# Needs: CUDA (../shared/gpu/env.sh), the reference venv (scripts/setup-reference.sh), and
# CARGO_TARGET_DIR if builds should go somewhere other than target/.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=${1:-$root/.gpu}
py=${EXO_PY:-$HOME/.cache/exo-dev/venv/bin/python}
target=${CARGO_TARGET_DIR:-$root/target}
mkdir -p "$dir"
cd "$root"
# .cargo/config.toml builds for this machine's CPU; a native build from the AMD Zen 4 box stopped
# with "Illegal instruction" on the lent machines' Intel Xeons, so default to AVX2-era x86-64.
export RUSTFLAGS=${RUSTFLAGS:--C target-cpu=x86-64-v3}
cargo build --profile fast -j "${JOBS:-1}" --features cuda --bin exo
test_bin=$(cargo test --profile fast -j "${JOBS:-1}" --features cuda -p exo-models --test cuda_matches_cpu --no-run --message-format=json 2>/dev/null \
  | "$py" -c 'import json,sys; print([j["executable"] for j in map(json.loads, sys.stdin) if j.get("executable")][-1])')
# Debug info is four fifths of each binary; the carry to the device is limited.
for b in "$target/fast/exo:exo" "$test_bin:cuda_matches_cpu"; do
  strip --strip-debug -o "$dir/${b##*:}" "${b%:*}"
  xz -T0 -6 -f "$dir/${b##*:}"
done
cp bench/gguf_random.py bench/cuda_vs_llamacpp.sh bench/cuda_ab.sh bench/cuda_kernel_times.py bench/spec_decode.py bench/spec_serve.py bench/_spec_prompts.py bench/_machine.py tests/gpu/check.sh "$dir/"
ver=$("$py" -c 'import importlib.metadata as m; print(m.version("gguf"))')
[ -n "$(ls "$dir"/gguf-"$ver"-*.whl 2>/dev/null)" ] || "$py" -m pip download -q --no-deps --only-binary=:all: -d "$dir" "gguf==$ver"
[ -f "$dir/tok.gguf" ] || "$py" bench/gguf_random.py tokenizer "$HOME/.exo/models/qwen2.5-coder-1.5b-instruct.gguf" "$dir/tok.gguf"
if [ ! -f "$dir/llama.cpp.tar.xz" ]; then
  tmp=$(mktemp -d)
  # LLAMA_SDIST: a llama_cpp_python-0.3.36.tar.gz already at hand (pip's download is slow: it
  # prepares the package's metadata with a build).
  sdist=${LLAMA_SDIST:-}
  if [ -z "$sdist" ]; then
    "$py" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$tmp" llama-cpp-python==0.3.36
    sdist="$tmp"/llama_cpp_python-0.3.36.tar.gz
  fi
  tar -xzf "$sdist" -C "$tmp"
  tar -C "$tmp/llama_cpp_python-0.3.36/vendor" --exclude=llama.cpp/models --exclude=llama.cpp/docs --exclude=llama.cpp/tests \
    --exclude=llama.cpp/examples --exclude=llama.cpp/media --exclude=llama.cpp/.git -cJf "$dir/llama.cpp.tar.xz" llama.cpp
  rm -rf "$tmp"
fi
du -sh "$dir"
