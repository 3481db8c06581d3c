#!/usr/bin/env bash
# Events: what two webhooks cost a push, and how fast and how soon events arrive.
#
# For each repetition, in alternating order: Berth (embedded default: SQLite + a directory)
# with no webhook, and Berth with two webhooks (CloudEvents, one event a request, signed)
# pointing at two local sinks (`berth-bench event-sink`), each pushed small images by
# WORKERS clients for SECONDS (`berth-bench small-images`). Prints images/s of both and their
# ratio (goal ≥ 0.95), and per sink the events delivered per second and the latency from each
# change's commit to its arrival, p50 and p99 (goal p99 < 1 s).
#
#   benches/events.sh                    # 3 repetitions, 8 workers, 10 s
#   REPS=5 WORKERS=16 SECONDS_EACH=20 benches/events.sh
#   BERTH_BIN=target/debug/berth benches/events.sh   # skip the release build
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
WORKERS=${WORKERS:-8}
SECONDS_EACH=${SECONDS_EACH:-10}
OUT=${OUT:-target/bench}
work="$OUT/events-$(date +%Y%m%dT%H%M%S)"
mkdir -p "$work"
results="$work/results.jsonl"

if [ -z "${BERTH_BIN:-}" ]; then
  cargo build --quiet --release --bin berth
  BERTH_BIN=target/release/berth
fi
bench_bin=$(cargo bench --no-run --bench berth-bench --message-format=json 2>/dev/null \
  | grep '"name":"berth-bench"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
[ -x "$bench_bin" ] || { echo "could not build berth-bench" >&2; exit 1; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() {
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$1/v2/" && return 0; sleep 0.1; done
  echo "port $1 did not answer" >&2; exit 1
}

printf 's3cr3t' >"$work/secret"
cat >"$work/webhooks.toml" <<TOML
[[webhook]]
name = "sink-a"
url = "http://127.0.0.1:5391/hook"
secret_file = "$work/secret"
[[webhook]]
name = "sink-b"
url = "http://127.0.0.1:5392/hook"
secret_file = "$work/secret"
TOML

run() { # label, rep, config (or "")
  local label=$1 rep=$2 config=$3 dir="$work/$1-$2"
  local sinks=()
  if [ -n "$config" ]; then
    for port in 5391 5392; do
      "$bench_bin" --label "$label-sink-$port" --json "$results" --sink-listen "127.0.0.1:$port" \
        --sink-idle 3 event-sink 2>>"$work/sink.log" &
      sinks+=($!)
    done
  fi
  env BERTH_LOG=warn ${config:+BERTH_CONFIG=$config} BERTH_EVENT_POLL_INTERVAL=100ms "$BERTH_BIN" serve \
    --listen 127.0.0.1:5380 --data-dir "$dir" >"$dir.log" 2>&1 &
  local berth=$!
  pids+=("$berth")
  wait_port 5380
  "$bench_bin" --url http://127.0.0.1:5380 --label "$label" --json "$results" \
    --workers "$WORKERS" --seconds "$SECONDS_EACH" small-images
  for sink in "${sinks[@]}"; do wait "$sink"; done
  kill "$berth"; wait "$berth" 2>/dev/null || true
}

for rep in $(seq 1 "$REPS"); do
  if [ $((rep % 2)) = 1 ]; then
    run none "$rep" ""; run two-webhooks "$rep" "$work/webhooks.toml"
  else
    run two-webhooks "$rep" "$work/webhooks.toml"; run none "$rep" ""
  fi
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
none = [r["value"] for r in rows if r["target"] == "none"]
two = [r["value"] for r in rows if r["target"] == "two-webhooks"]
print(f"small images/s, no webhook:   median {statistics.median(none):.1f}  (runs {', '.join(f'{v:.1f}' for v in none)})")
print(f"small images/s, two webhooks: median {statistics.median(two):.1f}  (runs {', '.join(f'{v:.1f}' for v in two)})")
print(f"ratio: {statistics.median(two) / statistics.median(none):.3f}  (goal >= 0.95)")
sinks = [r for r in rows if "-sink-" in r["target"]]
for r in sinks:
    print(f"{r['target']}: {r['value']:.1f} events/s delivered, commit-to-arrival p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms")
PY
echo "results: $results"
