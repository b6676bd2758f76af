#!/usr/bin/env bash
# The test command: fetches the real test model (cached), then runs the whole suite.
# Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
TRIPLETLAB_TEST_MODEL="$(bash scripts/fetch-test-model.sh)"
export TRIPLETLAB_TEST_MODEL
cargo test --locked "$@"
