#!/usr/bin/env bash
# Does training on mined hard negatives help? Fine-tunes all-MiniLM-L6-v2 on patents-dev.json
# with and without negatives mined from dev + patents-large.jsonl after its first 1,000 rows
# (minus every document of patents-val.json, which must stay unseen), and evaluates each on
# patents-val.json. Usage: scripts/experiment-mining.sh [OUT_DIR] (needs a release build and
# the test model: scripts/fetch-test-model.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-/tmp/tripletlab-mining-experiment}
data=${TRIPLETLAB_DATA:-$here/../shared/data}
model=${TRIPLETLAB_MODEL:-$HOME/.cache/tripletlab/test-models/all-MiniLM-L6-v2}
bin=${CARGO_TARGET_DIR:-$here/target}/release/tripletlab
mkdir -p "$out"
python3 - "$data" "$out/corpus.txt" <<'PY'
import json, sys
data, out = sys.argv[1:3]
val = json.load(open(f"{data}/patents-val.json", encoding="utf-8"))
unseen = {d for t in val for d in (t["query"], t["pos"], t["negative"])}
seen, docs = set(), []
for i, line in enumerate(open(f"{data}/patents-large.jsonl", encoding="utf-8")):
    if i < 1000 or not line.strip():
        continue
    t = json.loads(line)
    for d in (t["pos"], t["negative"]):
        if d not in unseen and d not in seen and "\n" not in d:
            seen.add(d); docs.append(d)
open(out, "w", encoding="utf-8").write("\n".join(docs) + "\n")
print(f"extra corpus: {len(docs)} documents of patents-large.jsonl rows 1001+, none in patents-val.json", file=sys.stderr)
PY
"$bin" mine --data "$data/patents-dev.json" --model "$model" --corpus "$out/corpus.txt" \
  --range-max 50 --relative-margin 0.05 --num-negatives 3 --out "$out/mined.jsonl" --json "$out/mined-report.json"
# The file's rows, then the mined ones: with --max-negatives 4 each query trains against its own
# negative and its 3 mined ones.
cat "$out/mined.jsonl" > "$out/dev-plus-mined.jsonl"
python3 -c "import json,sys; [print(json.dumps(t)) for t in json.load(open(sys.argv[1]))]" "$data/patents-dev.json" >> "$out/dev-plus-mined.jsonl"
run() { # name, data, extra flags
  local name=$1 file=$2; shift 2
  /usr/bin/time -f "$name: %e s wall, %M KiB peak" "$bin" finetune --data "$file" --val "$data/patents-val.json" \
    --model "$model" --out "$out/$name" --overwrite --eval-steps 0 --json "$out/$name.json" "$@" 2>&1 | tail -4
}
run plain "$data/patents-dev.json"
run mined "$out/dev-plus-mined.jsonl" --max-negatives 4
run mined-b64-gradcache "$out/dev-plus-mined.jsonl" --max-negatives 4 --batch-size 64 --mini-batch 32 --lr 4e-5
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
for name in ("plain", "mined", "mined-b64-gradcache"):
    log = json.load(open(f"{out}/{name}.json"))
    last = log["evals"][-1]["metrics"]; first = log["evals"][0]["metrics"]
    print(f"{name:22s} steps {log['total_steps']:3d}  {log['seconds']:6.0f} s  "
          f"nDCG@10 {first['cosine_ndcg@10']:.4f} -> {last['cosine_ndcg@10']:.4f}  "
          f"acc@1 {first['cosine_accuracy@1']:.4f} -> {last['cosine_accuracy@1']:.4f}")
PY
