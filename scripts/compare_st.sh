#!/usr/bin/env bash
# Runs `tripletlab bench` and the same measurements with sentence-transformers (scripts/st_bench.py)
# on the same model folder and triplet file, both ways: f32, and the fast mode (tripletlab
# `--compute bf16`; sentence-transformers with torch_dtype=bfloat16 for embedding and bf16=True
# for training), alternating the four runs ROUNDS times so machine noise hits all of them, and
# prints each figure's median and every ratio. Where this CPU has no AVX512-BF16, tripletlab's
# bf16 runs are left out (the bench says why).
# Usage: scripts/compare_st.sh [DATA] [ROUNDS] [extra bench args, e.g. --embed-limit 600]
# The Python side lives in a virtual environment ($ST_VENV, default ~/.cache/tripletlab/st-venv),
# created on first use with CPU torch and sentence-transformers from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-tests/fixtures/patents-dev.json}"
ROUNDS="${2:-2}"
shift $(( $# > 2 ? 2 : $# ))
VENV="${ST_VENV:-$HOME/.cache/tripletlab/st-venv}"
export ST_VENV="$VENV"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import sentence_transformers, datasets, accelerate" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch sentence-transformers datasets accelerate
fi
MODEL="$(bash scripts/fetch-test-model.sh)"
# The same (dev) profile as the app and the tests: dependencies are optimised (opt-level 3).
cargo build -q
BIN="${CARGO_TARGET_DIR:-target}/debug/tripletlab"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
BF16=1
"$BIN" bench --model "$MODEL" --data "$DATA" --compute bf16 --skip-embed --skip-cached --train-steps 0 \
  >/dev/null 2>"$WORK/probe.txt" || { BF16=0; echo "note: $(tail -1 "$WORK/probe.txt")" >&2; }
for r in $(seq 1 "$ROUNDS"); do
  for mode in f32 bf16; do
    if [ "$mode" = f32 ] || [ "$BF16" = 1 ]; then
      echo "round $r: tripletlab $mode" >&2
      "$BIN" bench --model "$MODEL" --data "$DATA" --skip-cached --compute "$mode" --json "$WORK/tl-$mode-$r.json" "$@"
    fi
    echo "round $r: sentence-transformers $mode" >&2
    "$VENV/bin/python" scripts/st_bench.py --model "$MODEL" --data "$DATA" --compute "$mode" --json "$WORK/st-$mode-$r.json" "$@"
  done
done
python3 - "$WORK" "$ROUNDS" <<'PY'
import json, os, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def runs(tool, mode):
    paths = [f"{work}/{tool}-{mode}-{r}.json" for r in range(1, rounds + 1)]
    return [json.load(open(p)) for p in paths if os.path.exists(p)]
def med(rs, *path):
    vals = []
    for x in rs:
        for p in path:
            x = x.get(p) if isinstance(x, dict) else None
        if x is not None:
            vals.append(x)
    return statistics.median(vals) if vals else float("nan")
figures = [("embedding texts/s", ("embedding", "texts_per_sec_median"), True),
           ("embedding tokens/s", ("embedding", "tokens_per_sec_median"), True),
           ("fine-tune s/step (mnrl, b16, seq128)", ("train_step", "median_secs_after_first"), False),
           ("peak RSS MiB", ("peak_rss_mib",), False)]
data = {(t, m): runs(t, m) for t in ("tl", "st") for m in ("f32", "bf16")}
for t, m in (("tl", "bf16"), ("tl", "f32")):
    if data[(t, m)]:
        print(f"tripletlab {m} kernels: {data[(t, m)][0].get('kernels', '?')}")
print(f"sentence-transformers: torch {data[('st', 'f32')][0].get('torch', '?')}, {rounds} rounds alternating")
pairs = [("tl", "f32", "st", "f32"), ("tl", "bf16", "st", "bf16"), ("tl", "bf16", "st", "f32"),
         ("tl", "bf16", "tl", "f32"), ("st", "bf16", "st", "f32")]
name = {"tl": "tripletlab", "st": "sent-transf"}
for fig, path, higher in figures:
    print(f"\n{fig} (medians)" + ("; ratio > 1 is faster" if higher else "; ratio < 1 is faster"))
    for t in ("tl", "st"):
        print("  " + "  ".join(f"{name[t]} {m}: {med(data[(t, m)], *path):10.2f}" for m in ("f32", "bf16")))
    for a, am, b, bm in pairs:
        x, y = med(data[(a, am)], *path), med(data[(b, bm)], *path)
        if x == x and y == y and y:
            print(f"  {name[a]} {am} / {name[b]} {bm}: {x / y:6.2f}")
PY
