#!/usr/bin/env bash
# The scale-out fault run, for longer: three replicas behind HAProxy with their own Postgres and
# Garage, BERTH_SOAK_UPLOADS clients uploading in 1 MiB chunks (resuming as the spec says), a
# random replica SIGKILLed and restarted every 2-5 s for BERTH_SOAK_SECONDS, then a Postgres
# restart and a 10 s S3 freeze. Prints uploads committed, resumptions, replicas killed and
# answers by status; fails if any upload is lost or corrupt, if Berth answers 500, or if a row
# points at missing bytes.
#
#   scripts/soak.sh                              # 10 minutes, 50 clients
#   BERTH_SOAK_SECONDS=120 BERTH_SOAK_UPLOADS=20 scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
export BERTH_SOAK_SECONDS="${BERTH_SOAK_SECONDS:-600}"
export BERTH_SOAK_UPLOADS="${BERTH_SOAK_UPLOADS:-50}"
BERTH_TEST_BACKEND=postgres-s3 cargo test --test integration -- \
  scaleout::uploads_survive_killed_replicas_a_database_restart_and_a_frozen_s3 --nocapture
