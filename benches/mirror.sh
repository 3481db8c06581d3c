#!/usr/bin/env bash
# Pull-through caches side by side: CLIENTS concurrent cold pulls of one blob through Berth's
# mirror and through CNCF Distribution 2.8's proxy mode (docker-registry), both in front of
# the same upstream (a Berth on the filesystem, whose metrics count the upstream fetches),
# then the same pulls warm; and, as the yardstick, the same pulls straight from the upstream
# (`direct`: a normal Berth pull, what the mirror's cold pull is held to within 0.9x and its
# warm pull equal to). Each repetition uses a fresh blob per target, targets in shuffled
# order. Prints, per target: wall time of the cold and the warm pulls (median), aggregate
# MB/s, and how many GETs of the blob the upstream served for one cold round (for `direct`,
# the clients' own).
#
#   benches/mirror.sh                          # 128 MiB, 16 clients, 3 repetitions
#   SIZE_MIB=512 CLIENTS=32 REPS=5 benches/mirror.sh
#   BERTH_BIN=target/debug/berth benches/mirror.sh   # skip the release build
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${SIZE_MIB:-128}
CLIENTS=${CLIENTS:-16}
REPS=${REPS:-3}
OUT=${OUT:-target/bench}
work="$OUT/mirror-$(date +%Y%m%dT%H%M%S)"
mkdir -p "$work"

if ! command -v docker-registry >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-registry >/dev/null
fi
if [ -z "${BERTH_BIN:-}" ]; then
  cargo build --quiet --release --bin berth
  BERTH_BIN=target/release/berth
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() {
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$1/v2/" && return 0; sleep 0.1; done
  echo "port $1 did not answer" >&2; exit 1
}

# The upstream, with metrics on an admin port.
BERTH_LOG=warn BERTH_ADMIN_LISTEN=127.0.0.1:5310 "$BERTH_BIN" serve --listen 127.0.0.1:5301 \
  --data-dir "$work/origin" >"$work/origin.log" 2>&1 &
pids+=($!)
# Distribution's proxy asks the upstream at start and exits if it does not answer.
wait_port 5301
cat >"$work/mirror.toml" <<TOML
[[upstream]]
name = "origin"
url = "http://127.0.0.1:5301"
default = true
TOML
BERTH_LOG=warn BERTH_CONFIG="$work/mirror.toml" "$BERTH_BIN" serve --listen 127.0.0.1:5302 \
  --data-dir "$work/berth-mirror" >"$work/berth-mirror.log" 2>&1 &
pids+=($!)
cat >"$work/distribution-proxy.yml" <<YML
version: 0.1
log: {level: error}
storage:
  filesystem: {rootdirectory: $PWD/$work/distribution-proxy}
http: {addr: 127.0.0.1:5303}
proxy: {remoteurl: "http://127.0.0.1:5301"}
YML
docker-registry serve "$work/distribution-proxy.yml" >"$work/distribution-proxy.log" 2>&1 &
pids+=($!)
for p in 5302 5303; do wait_port $p; done

declare -A port=([direct]=5301 [berth-mirror]=5302 [distribution-proxy]=5303)
upstream_gets() {
  curl -s http://127.0.0.1:5310/metrics \
    | awk '/^berth_http_requests_total\{/ && /operation="get_blob"/ && /status="200"/ {s += $NF} END {print s + 0}'
}
push_blob() {  # a fresh random blob into the upstream; prints its digest
  head -c $((SIZE_MIB << 20)) /dev/urandom >"$work/blob"
  local digest="sha256:$(sha256sum "$work/blob" | cut -d' ' -f1)" location
  location=$(curl -s -D - -o /dev/null -X POST http://127.0.0.1:5301/v2/library/bench/blobs/uploads/ \
    | tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
  curl -s -f -o /dev/null -X PUT -H 'content-type: application/octet-stream' \
    --data-binary @"$work/blob" "http://127.0.0.1:5301${location}?digest=$digest"
  echo "$digest"
}
pull_all() {  # port digest: CLIENTS concurrent pulls, each checked; prints wall seconds
  local started ended i failed=0 jobs=()
  started=$(date +%s.%N)
  for i in $(seq 1 "$CLIENTS"); do
    (curl -s -f -L "http://127.0.0.1:$1/v2/library/bench/blobs/$2" | sha256sum | grep -q "${2#sha256:}") &
    jobs+=($!)
  done
  for j in "${jobs[@]}"; do wait "$j" || failed=$((failed + 1)); done
  ended=$(date +%s.%N)
  [ "$failed" = 0 ] || { echo "$failed of $CLIENTS pulls through port $1 failed" >&2; exit 1; }
  echo "$ended - $started" | bc
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM"
  echo "berth: $(git rev-parse --short HEAD 2>/dev/null || echo unknown) ($BERTH_BIN)"
  echo "distribution: $(docker-registry --version 2>/dev/null | head -1)"
  echo "settings: SIZE_MIB=$SIZE_MIB CLIENTS=$CLIENTS REPS=$REPS"
} | tee "$work/environment.txt"

results="$work/results.tsv"
for rep in $(seq 1 "$REPS"); do
  for target in $(printf '%s\n' direct berth-mirror distribution-proxy | shuf); do
    digest=$(push_blob)
    before=$(upstream_gets)
    cold=$(pull_all "${port[$target]}" "$digest")
    fetches=$(( $(upstream_gets) - before ))
    warm=$(pull_all "${port[$target]}" "$digest")
    printf '%s\t%s\t%s\t%s\n' "$target" "$cold" "$warm" "$fetches" | tee -a "$results"
  done
done

echo
printf '%-20s %12s %14s %12s %14s %18s\n' target "cold s" "cold MB/s" "warm s" "warm MB/s" "upstream GETs"
for target in direct berth-mirror distribution-proxy; do
  awk -F'\t' -v t="$target" -v mib="$SIZE_MIB" -v n="$CLIENTS" '
    $1 == t { c[++k] = $2; w[k] = $3; f[k] = $4 }
    function median(a, m,   i, j, x) {
      for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x }
      return a[int((m + 1) / 2)]
    }
    END {
      fl = f[1]; fh = f[1]; for (i = 2; i <= k; i++) { if (f[i] < fl) fl = f[i]; if (f[i] > fh) fh = f[i] }
      cm = median(c, k); wm = median(w, k)
      printf "%-20s %12.2f %14.0f %12.2f %14.0f %18s\n", t, cm, mib * 1.048576 * n / cm, wm, mib * 1.048576 * n / wm, (fl == fh ? fl : fl "-" fh)
    }' "$results"
done
echo "results: $results"
