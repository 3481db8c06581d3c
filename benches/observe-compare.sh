#!/usr/bin/env bash
# What the access log costs: manifest GET and HEAD by tag at 64 connections on the embedded
# registry with the access log off (BERTH_LOG=warn), as text and as JSON (written to a file),
# REPS interleaved repetitions, then the medians and ratios. Metrics are recorded in every run.
#
#   benches/observe-compare.sh            # REPS=3 SECONDS_PER=5
set -euo pipefail
cd "$(dirname "$0")/.."
REPS="${REPS:-3}"
SECONDS_PER="${SECONDS_PER:-5}"
PORT="${PORT:-5210}"
cargo build --release --bin berth
cargo bench --bench berth-bench --no-run
BENCH="$(ls -t target/release/deps/berth_bench-* | grep -v '\.d$' | head -n1)"
OUT="target/bench/observe-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"

run() { # mode
  local env=(BERTH_DATA_DIR="$OUT/data-$1")
  case $1 in
    log-off) env+=(BERTH_LOG=warn) ;;
    log-text) env+=(BERTH_LOG=info) ;;
    log-json) env+=(BERTH_LOG=info BERTH_LOG_FORMAT=json) ;;
  esac
  env "${env[@]}" target/release/berth --listen "127.0.0.1:$PORT" > "$OUT/$1.out" 2> "$OUT/$1.log" &
  local pid=$!
  sleep 1
  # The report gives every "berth*" target's ratio to the others: here, to the log off.
  local label="berth-$1"
  [ "$1" = log-off ] && label="log-off"
  "$BENCH" --url "http://127.0.0.1:$PORT" --label "$label" --seconds "$SECONDS_PER" \
    --json "$OUT/results.jsonl" manifest-get manifest-head
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$OUT/data-$1" "$OUT/$1.log"
}
for _ in $(seq 1 "$REPS"); do
  for mode in log-off log-text log-json; do run "$mode"; done
done
echo
"$BENCH" report "$OUT/results.jsonl"
