#!/usr/bin/env bash
# How long garbage collection takes: pushes ORPHANS small blobs that no manifest references
# (berth-bench orphans, WORKERS clients), then times `berth gc --dry-run` and `berth gc`
# (grace period 0) on the embedded registry (SQLite + directory) and on Postgres + S3 (Garage),
# and checks that nothing is left to collect.
#
#   benches/gc.sh                        # ORPHANS=100000 WORKERS=16 BACKENDS="sqlite postgres-s3"
set -euo pipefail
cd "$(dirname "$0")/.."
ORPHANS="${ORPHANS:-100000}"
WORKERS="${WORKERS:-16}"
BACKENDS="${BACKENDS:-sqlite postgres-s3}"
PORT="${PORT:-5230}"
cargo build --release --bin berth
cargo bench --bench berth-bench --no-run
BENCH="$(ls -t target/release/deps/berth_bench-* | grep -v '\.d$' | head -n1)"
OUT="target/bench/gc-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
BERTH="$PWD/target/release/berth"

timed() { # label, command...
  local label="$1"; shift
  local start end
  start=$(date +%s.%N)
  "$@" > "$OUT/$label.out" 2>&1 || { cat "$OUT/$label.out" >&2; return 1; }
  end=$(date +%s.%N)
  printf "%-28s %8.1f s   %s\n" "$label" "$(awk "BEGIN { print $end - $start }")" "$(tail -n1 "$OUT/$label.out")"
}

for backend in $BACKENDS; do
  env=(BERTH_DATA_DIR="$OUT/data-$backend" BERTH_LOG=warn BERTH_GC_INTERVAL=0 BERTH_GC_GRACE_PERIOD=0s)
  if [ "$backend" = postgres-s3 ]; then
    # shellcheck source=scripts/services.sh
    source scripts/services.sh >/dev/null
    db="berth_gc_bench_$$"
    psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db" postgres
    env+=(BERTH_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" BERTH_STORAGE=s3
          BERTH_S3_BUCKET="$S3_BUCKET" BERTH_S3_ENDPOINT="$AWS_ENDPOINT_URL"
          BERTH_S3_REGION="$AWS_REGION" BERTH_S3_FORCE_PATH_STYLE=true
          BERTH_S3_PREFIX="gc-bench-$$/")
  fi
  env "${env[@]}" "$BERTH" --listen "127.0.0.1:$PORT" > "$OUT/$backend.out" 2> "$OUT/$backend.log" &
  pid=$!
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$PORT/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
  echo "== $backend: $ORPHANS orphan blobs"
  "$BENCH" --url "http://127.0.0.1:$PORT" --label "$backend" --workers "$WORKERS" \
    --orphans "$ORPHANS" --json "$OUT/results.jsonl" orphans
  timed "$backend gc --dry-run" env "${env[@]}" "$BERTH" gc --dry-run
  timed "$backend gc" env "${env[@]}" "$BERTH" gc
  timed "$backend gc (nothing left)" env "${env[@]}" "$BERTH" gc --dry-run
  grep -q "would delete 0 blob link(s) and 0 blob(s)" "$OUT/$backend gc (nothing left).out"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  if [ "$backend" = postgres-s3 ]; then
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE $db WITH (FORCE)" postgres
  fi
  rm -rf "$OUT/data-$backend"
done
