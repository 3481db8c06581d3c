#!/usr/bin/env bash
# Manifest GET and HEAD by tag at 64 connections on the embedded registry, with access control
# off, with token authentication (the built-in issuer; the client fetches one token and sends
# it with every request) and with Basic authentication: REPS interleaved repetitions, then the
# medians and ratios to auth off.
#
#   benches/auth-compare.sh            # REPS=3 SECONDS_PER=5
set -euo pipefail
cd "$(dirname "$0")/.."
REPS="${REPS:-3}"
SECONDS_PER="${SECONDS_PER:-5}"
PORT="${PORT:-5200}"
for tool in htpasswd openssl; do
  command -v "$tool" >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq apache2-utils openssl >/dev/null
  }
done
cargo build --release --bin berth
cargo bench --bench berth-bench --no-run
BENCH="$(ls -t target/release/deps/berth_bench-* | grep -v '\.d$' | head -n1)"
OUT="target/bench/auth-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
htpasswd -cbB "$OUT/users" bench bench-password 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$OUT/key.pem" 2>/dev/null

run() { # mode
  local env=(BERTH_DATA_DIR="$OUT/data-$1" BERTH_LOG=warn)
  local auth=()
  case $1 in
    token) env+=(BERTH_AUTH=token BERTH_AUTH_HTPASSWD="$OUT/users" BERTH_AUTH_TOKEN_KEY="$OUT/key.pem")
           auth=(--auth bench:bench-password --auth-token) ;;
    basic) env+=(BERTH_AUTH=basic BERTH_AUTH_HTPASSWD="$OUT/users")
           auth=(--auth bench:bench-password) ;;
  esac
  env "${env[@]}" target/release/berth --listen "127.0.0.1:$PORT" > "$OUT/$1.log" 2>&1 &
  local pid=$!
  sleep 1
  # The report gives every "berth*" target's ratio to the others: here, to auth off.
  local label="berth-$1"
  [ "$1" = none ] && label="auth-off"
  "$BENCH" --url "http://127.0.0.1:$PORT" --label "$label" --seconds "$SECONDS_PER" \
    --json "$OUT/results.jsonl" "${auth[@]}" manifest-get manifest-head
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
for _ in $(seq 1 "$REPS"); do
  for mode in none token basic; do run "$mode"; done
done
echo
"$BENCH" report "$OUT/results.jsonl"
