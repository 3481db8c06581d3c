#!/usr/bin/env bash
# Berth against its peers, side by side, in one run:
#   Berth (SQLite + directory), Berth (Postgres + S3 on Garage), CNCF Distribution 2.8
#   (docker-registry) on the filesystem and with its S3 driver on the same Garage,
#   ferro-oci-server, and raw Garage (S3 multipart put and GET from the same client).
# Installs what it needs on a fresh machine (apt, cargo install), starts every target,
# runs each workload on every target in shuffled order within each repetition, then prints
# medians and Berth's ratios (berth-bench report).
#
#   benches/compare.sh                  # defaults below
#   REPS=5 SIZE_MIB=512 benches/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
SIZE_MIB=${SIZE_MIB:-256}          # monolithic, streaming and pull workloads
CHUNKED_MIB=${CHUNKED_MIB:-64}     # chunked push in 1 MiB PATCHes (Distribution on S3 is slow here)
SECONDS_PER=${SECONDS_PER:-5}      # timed loops (manifest GET/HEAD, small images)
CONNECTIONS=${CONNECTIONS:-64}
WORKERS=${WORKERS:-8}
TAG_COUNTS=${TAG_COUNTS:-1000,10000,100000}
PEER_TAG_COUNTS=${PEER_TAG_COUNTS:-1000,10000}
CONCURRENT=${CONCURRENT:-32}       # concurrent uploads for the memory-budget workload
CONCURRENT_MIB=${CONCURRENT_MIB:-256}
OUT=${OUT:-target/bench}

stamp=$(date +%Y%m%dT%H%M%S)
work="$OUT/$stamp"
mkdir -p "$work"
results="$work/results.jsonl"

# ---- what the run needs --------------------------------------------------------------------
source scripts/services.sh
if ! command -v docker-registry >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-registry >/dev/null
fi
if ! command -v ferro-oci-server >/dev/null; then
  cargo install --quiet ferro-oci-server
fi
cargo build --quiet --release --bin berth
# Built once and run directly, so that nothing recompiles while figures are taken.
bench_bin=$(cargo bench --no-run --bench berth-bench --message-format=json 2>/dev/null \
  | grep '"name":"berth-bench"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
[ -x "$bench_bin" ] || { echo "could not build berth-bench" >&2; exit 1; }
bench() { "$bench_bin" --json "$results" --size-mib "$SIZE_MIB" \
  --seconds "$SECONDS_PER" --concurrency "$CONNECTIONS" --workers "$WORKERS" "$@"; }

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$BERTH_STARTED_GARAGE" = 1 ]; then scripts/garage.sh stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$1/v2/" && return 0; sleep 0.1; done
  echo "target on port $1 did not start" >&2; return 1
}

# ---- targets ---------------------------------------------------------------------------------
declare -A port pid_of
port[berth-sqlite]=5201; port[berth-pg-s3]=5202; port[distribution-fs]=5203
port[distribution-s3]=5204; port[ferro]=5205

BERTH_LOG=warn target/release/berth --listen 127.0.0.1:5201 --data-dir "$work/berth-sqlite" \
  >"$work/berth-sqlite.log" 2>&1 &
pid_of[berth-sqlite]=$!; pids+=($!)

db="berth_bench_$stamp"; db=${db//T/_}
psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" postgres
BERTH_LOG=warn BERTH_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" BERTH_STORAGE=s3 \
  BERTH_S3_BUCKET="$S3_BUCKET" BERTH_S3_ENDPOINT="$AWS_ENDPOINT_URL" BERTH_S3_REGION="$AWS_REGION" \
  BERTH_S3_FORCE_PATH_STYLE=true BERTH_S3_PREFIX="bench-$stamp/" \
  target/release/berth --listen 127.0.0.1:5202 --data-dir "$work/berth-pg-s3" \
  >"$work/berth-pg-s3.log" 2>&1 &
pid_of[berth-pg-s3]=$!; pids+=($!)

cat >"$work/distribution-fs.yml" <<YML
version: 0.1
log: {level: error}
storage:
  filesystem: {rootdirectory: $PWD/$work/distribution-fs}
  delete: {enabled: true}
http: {addr: 127.0.0.1:5203}
YML
cat >"$work/distribution-s3.yml" <<YML
version: 0.1
log: {level: error}
storage:
  s3:
    accesskey: $AWS_ACCESS_KEY_ID
    secretkey: $AWS_SECRET_ACCESS_KEY
    region: $AWS_REGION
    regionendpoint: $AWS_ENDPOINT_URL
    bucket: $S3_BUCKET
    forcepathstyle: true
    secure: false
    v4auth: true
    rootdirectory: /distribution-$stamp
  delete: {enabled: true}
http: {addr: 127.0.0.1:5204}
YML
for t in distribution-fs distribution-s3; do
  # Distribution's S3 driver panics when AWS_CA_BUNDLE is set.
  env -u AWS_CA_BUNDLE docker-registry serve "$work/$t.yml" >"$work/$t.log" 2>&1 &
  pid_of[$t]=$!; pids+=($!)
done
FERRO_OCI_LISTEN=127.0.0.1:5205 FERRO_OCI_STORAGE_DIR="$PWD/$work/ferro" RUST_LOG=warn \
  ferro-oci-server >"$work/ferro.log" 2>&1 &
pid_of[ferro]=$!; pids+=($!)

targets=(berth-sqlite berth-pg-s3 distribution-fs distribution-s3 ferro)
for t in "${targets[@]}"; do wait_port "${port[$t]}"; done

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(lscpu | sed -n 's/Model name: *//p' | head -1)"
  echo "kernel: $(uname -r)"
  echo "berth: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "distribution: $(docker-registry --version 2>/dev/null | head -1)"
  echo "garage: $(garage --version 2>/dev/null | head -1)"
  echo "settings: REPS=$REPS SIZE_MIB=$SIZE_MIB CHUNKED_MIB=$CHUNKED_MIB SECONDS_PER=$SECONDS_PER CONNECTIONS=$CONNECTIONS WORKERS=$WORKERS"
} | tee "$work/environment.txt"

shuffled() { printf '%s\n' "$@" | shuf; }
run_on() {  # target, workloads...
  local t=$1; shift
  bench --url "http://127.0.0.1:${port[$t]}" --label "$t" --repo "bench/$t" "$@" || true
}

# ---- repetitions -----------------------------------------------------------------------------
for rep in $(seq 1 "$REPS"); do
  echo "=== repetition $rep/$REPS"
  bench --label raw-s3 s3-put || true
  bench --label raw-s3 s3-put-parallel || true
  for workload in push-mono push-stream pull-warm manifest-get manifest-head small-images; do
    for t in $(shuffled "${targets[@]}"); do run_on "$t" "$workload"; done
  done
  for t in $(shuffled "${targets[@]}"); do run_on "$t" push-chunked --size-mib "$CHUNKED_MIB"; done
done

echo "=== tag listing"
for t in berth-sqlite berth-pg-s3; do run_on "$t" tags-list --tag-counts "$TAG_COUNTS"; done
for t in distribution-fs ferro; do run_on "$t" tags-list --tag-counts "$PEER_TAG_COUNTS"; done

echo "=== memory: $CONCURRENT concurrent ${CONCURRENT_MIB} MiB uploads"
for t in berth-sqlite berth-pg-s3; do
  run_on "$t" push-concurrent --workers "$CONCURRENT" --size-mib "$CONCURRENT_MIB"
done
for t in "${targets[@]}"; do run_on "$t" rss --pid "${pid_of[$t]}"; done

"$bench_bin" report "$results" | tee "$work/report.txt"
echo "results: $results"
