#!/usr/bin/env bash
# Runs every test: fetches the real models the tests use (sha256-checked, skipped when present),
# installs the API clients the server tests drive (scripts/setup-clients.sh: seconds, skipped when
# up to date), then runs the whole workspace's tests with the `fast` profile: release optimisation
# without LTO, so the many test binaries link quickly on a 2-core CI machine while running at full
# speed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/exo-dev/target}"
scripts/fetch-models.sh all >&2
scripts/setup-clients.sh >&2
cargo test --profile fast --locked --workspace "$@"
