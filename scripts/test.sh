#!/usr/bin/env bash
# Runs every test: fetches the real models the tests use (sha256-checked, skipped when present),
# then the whole workspace's tests in release mode (the CLI tests run the release binary).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/exo-dev/target}"
scripts/fetch-models.sh all >&2
cargo test --release --locked --workspace "$@"
