#!/usr/bin/env bash
# The scale-out fault run, for longer: three replicas behind HAProxy with their own Postgres and
# Garage, BERTH_SOAK_UPLOADS clients uploading in 1 MiB chunks (resuming as the spec says), a
# random replica SIGKILLed and restarted every 2-5 s for BERTH_SOAK_SECONDS, then a Postgres
# restart and a 10 s S3 freeze. Prints uploads committed, resumptions, replicas killed and
# answers by status; fails if any upload is lost or corrupt, if Berth answers 500, or if a row
# points at missing bytes.
#
# Every committed upload is kept to be read back at the end, in the cluster's own Garage and
# Postgres under TMPDIR: on 2 cores that is about 10 GB a minute at 50 clients (staged chunks
# pass through Postgres's WAL), so the run refuses to start without room for it.
#
#   scripts/soak.sh                              # 10 minutes, 50 clients
#   BERTH_SOAK_SECONDS=120 BERTH_SOAK_UPLOADS=20 scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export BERTH_SOAK_SECONDS="${BERTH_SOAK_SECONDS:-600}"
export BERTH_SOAK_UPLOADS="${BERTH_SOAK_UPLOADS:-50}"
need_gb=$(( (BERTH_SOAK_SECONDS * BERTH_SOAK_UPLOADS * 10 + 3000 - 1) / 3000 + 2 ))
free_gb=$(( $(df -Pk "${TMPDIR:-/tmp}" | awk 'NR==2 {print $4}') / 1048576 ))
if [ "$free_gb" -lt "$need_gb" ]; then
  echo "the soak needs about $need_gb GB free under ${TMPDIR:-/tmp} and $free_gb GB are;" \
       "shorten it (BERTH_SOAK_SECONDS) or point TMPDIR at a larger disk" >&2
  exit 1
fi
source scripts/services.sh
BERTH_TEST_BACKEND=postgres-s3 cargo test --test integration -- \
  scaleout::uploads_survive_killed_replicas_a_database_restart_and_a_frozen_s3 --nocapture
