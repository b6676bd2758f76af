#!/usr/bin/env bash
# Runs `tripletlab bench` and the same measurements with sentence-transformers (scripts/st_bench.py)
# on the same model folder and triplet file, alternating the two tools ROUNDS times so machine noise
# hits both, and prints each figure's median and the ratio.
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
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r: tripletlab" >&2
  "$BIN" bench --model "$MODEL" --data "$DATA" --skip-cached --json "$WORK/tl-$r.json" "$@"
  echo "round $r: sentence-transformers" >&2
  "$VENV/bin/python" scripts/st_bench.py --model "$MODEL" --data "$DATA" --json "$WORK/st-$r.json" "$@"
done
python3 - "$WORK" "$ROUNDS" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
tl = [json.load(open(f"{work}/tl-{r}.json")) for r in range(1, rounds + 1)]
st = [json.load(open(f"{work}/st-{r}.json")) for r in range(1, rounds + 1)]
def med(runs, *path):
    vals = []
    for x in runs:
        for p in path:
            x = x.get(p) if isinstance(x, dict) else None
        if x is not None:
            vals.append(x)
    return statistics.median(vals) if vals else float("nan")
rows = [("embedding texts/s (median)", ("embedding", "texts_per_sec_median"), True),
        ("embedding tokens/s (median)", ("embedding", "tokens_per_sec_median"), True),
        ("fine-tune s/step (mnrl, b16, seq128)", ("train_step", "median_secs_after_first"), False),
        ("peak RSS MiB", ("peak_rss_mib",), False)]
print(f"{'figure':<40} {'tripletlab':>12} {'sent-transf':>12} {'ratio':>8}")
for name, path, higher_better in rows:
    a, b = med(tl, *path), med(st, *path)
    ratio = a / b if b else float("nan")
    print(f"{name:<40} {a:>12.2f} {b:>12.2f} {ratio:>8.2f}" + ("  (tripletlab / ST; >1 is faster)" if higher_better else "  (tripletlab / ST; <1 is faster)"))
PY
