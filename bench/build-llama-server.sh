#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` (CPU, tuned to this machine) from the llama-cpp-python
# 0.3.36 source release, the same llama.cpp the reference venv runs, for benchmarks that need
# its parallel slots and continuous batching (llama-cpp-python's server runs one request at a
# time). About 10-20 minutes on 2 cores, once; prints the binary's path.
#
#   bench/build-llama-server.sh [TARGET]   another tool of the same build, e.g. llama-batched-bench
#                                          (a minute more once llama-server is built)
# Output: $EXO_DEV_HOME/llama.cpp (default ~/.cache/exo-dev/llama.cpp).
set -euo pipefail
dev="${EXO_DEV_HOME:-$HOME/.cache/exo-dev}"
root="$dev/llama.cpp"
target="${1:-llama-server}"
bin="$root/build/bin/$target"
if [[ -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi
mkdir -p "$root"
tools="$dev/venv-build"
if [[ ! -x "$tools/bin/cmake" ]]; then
    python3 -m venv "$tools"
    "$tools/bin/pip" install -q cmake==4.4.5 ninja==1.13.2 >&2
fi
src="$root/llama_cpp_python-0.3.36"
if [[ ! -d "$src/vendor/llama.cpp" ]]; then
    # The source release, from PyPI's simple index (PEP 691 JSON), checked against the sha256
    # listed there.
    "$tools/bin/python" - "$root" >&2 <<'PY'
import hashlib, json, sys, tarfile, urllib.request
root, name = sys.argv[1], "llama_cpp_python-0.3.36.tar.gz"
req = urllib.request.Request("https://pypi.org/simple/llama-cpp-python/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
entry = next(f for f in json.load(urllib.request.urlopen(req))["files"] if f["filename"] == name)
data = urllib.request.urlopen(entry["url"]).read()
assert hashlib.sha256(data).hexdigest() == entry["hashes"]["sha256"], f"{name}: checksum mismatch"
open(f"{root}/{name}", "wb").write(data)
tarfile.open(f"{root}/{name}").extractall(root, filter="data")
PY
fi
export PATH="$tools/bin:$PATH"
cmake -S "$src/vendor/llama.cpp" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >&2
ninja -C "$root/build" -j "$(nproc)" "$target" >&2
echo "$bin"
