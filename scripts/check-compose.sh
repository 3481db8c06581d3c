#!/usr/bin/env bash
# Brings up the development stack of deploy/compose.yaml (Postgres, S3, Berth) with Debian's
# docker-compose and the override deploy/compose.local.yaml, which swaps in locally built
# images (no image registry is needed); pushes and pulls an image through it with skopeo
# (downloads follow the presigned redirect to the S3 container on localhost:9000), and tears
# it down. Needs the images of scripts/local-images.sh and scripts/check-image.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v docker-compose >/dev/null || apt-get install -y -qq docker-compose >/dev/null
PROJECT="berth-compose-check"
compose() { docker-compose -p "$PROJECT" -f deploy/compose.yaml -f deploy/compose.local.yaml "$@"; }
WORK="$(mktemp -d)"
cleanup() { compose down -v --remove-orphans >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

echo "compose: up"
compose up -d --no-build >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; exit 1; }
for _ in $(seq 1 120); do
  curl -fsS http://127.0.0.1:5000/v2/ >/dev/null 2>&1 && break
  sleep 0.5
done
curl -fsS http://127.0.0.1:5000/v2/ >/dev/null || { compose logs >&2; echo "berth did not answer" >&2; exit 1; }

echo "compose: push and pull with skopeo"
mkdir -p "$WORK/app/bin"
cp "$(command -v busybox)" "$WORK/app/bin/busybox"
printf 'FROM scratch\nCOPY bin/busybox /bin/busybox\nCMD ["/bin/busybox","true"]\n' > "$WORK/app/Dockerfile"
docker build -q -t berth-compose-check/app:1 "$WORK/app" >/dev/null
skopeo copy -q --dest-tls-verify=false docker-daemon:berth-compose-check/app:1 \
  docker://127.0.0.1:5000/compose/app:1
pushed="$(skopeo inspect --tls-verify=false --format '{{.Digest}}' docker://127.0.0.1:5000/compose/app:1)"
skopeo copy -q --src-tls-verify=false docker://127.0.0.1:5000/compose/app:1 "dir:$WORK/pulled"
pulled="sha256:$(sha256sum "$WORK/pulled/manifest.json" | cut -d' ' -f1)"
[ "$pushed" = "$pulled" ] || { echo "pulled $pulled, pushed $pushed" >&2; exit 1; }
# The layer came from S3 through the presigned redirect: compare it with the pushed one.
layer="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["layers"][0]["digest"].split(":")[1])' "$WORK/pulled/manifest.json")"
[ "$(sha256sum "$WORK/pulled/$layer" | cut -d' ' -f1)" = "$layer" ] || { echo "the pulled layer is damaged" >&2; exit 1; }
docker image rm -f berth-compose-check/app:1 >/dev/null

echo "compose: down"
compose down -v --remove-orphans >/dev/null 2>&1
echo "compose stack: all checks passed"
