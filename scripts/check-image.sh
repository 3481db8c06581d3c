#!/usr/bin/env bash
# Builds Berth's container image (deploy/Dockerfile, target prebuilt) from a host-built binary
# on a Debian base made with debootstrap (no image registry is needed), then runs it the way
# the Helm chart does - non-root, read-only root filesystem, no capabilities - and pushes and
# pulls an image through it with skopeo, across a container restart.
#   BERTH_IMAGE_BINARY   binary to put in the image [default: the integration suite's build of
#                        target/debug/berth, default features]
#   BERTH_RUNTIME_IMAGE  base image [default: local/bookworm:base, made here when missing]
set -euo pipefail
cd "$(dirname "$0")/.."

BASE="${BERTH_RUNTIME_IMAGE:-local/bookworm:base}"
BINARY="${BERTH_IMAGE_BINARY:-}"
if [ -z "$BINARY" ]; then
  # The binary the integration suite runs: built through `cargo test`, whose dependency
  # features differ from `cargo build`'s, so this reuses the suite's build instead of another.
  cargo test --quiet --no-run --test integration
  BINARY=target/debug/berth
fi
[ -x "$BINARY" ] || { echo "no berth binary at $BINARY: build it first (cargo build --release)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "no Docker engine: scripts/services.sh starts one" >&2; exit 1; }

WORK="$(mktemp -d)"
NAME="berth-image-check-$$"
cleanup() {
  docker rm -f "$NAME" >/dev/null 2>&1 || true
  docker volume rm -f "$NAME" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  [ "$BASE" = local/bookworm:base ] || { echo "base image $BASE is missing" >&2; exit 1; }
  scripts/local-images.sh
fi

echo "image: building from $BINARY on $BASE"
mkdir "$WORK/context"
# Debug information is for the host's debugger, not for the image.
objcopy --strip-debug "$BINARY" "$WORK/context/berth"
# COPY keeps the file's mode, and the image's user is not its owner: whatever umask built it,
# the binary must be executable by everyone.
chmod 0755 "$WORK/context/berth"
docker build -q -f deploy/Dockerfile --target prebuilt \
  --build-arg RUNTIME_IMAGE="$BASE" --build-arg BERTH_BINARY=berth \
  -t berth:check "$WORK/context" >/dev/null
user="$(docker image inspect -f '{{.Config.User}}' berth:check)"
[ "$user" = "10001:10001" ] || { echo "the image runs as '$user', not a non-root user" >&2; exit 1; }
size="$(docker image inspect -f '{{.Size}}' berth:check)"
echo "  built: $((size / 1000000)) MB, user $user"

echo "image: running read-only, non-root, without capabilities"
start() {
  docker run -d --name "$NAME" --read-only --cap-drop ALL --security-opt no-new-privileges \
    -v "$NAME:/var/lib/berth" -p 127.0.0.1::5000 -p 127.0.0.1::5001 \
    -e BERTH_LOG_FORMAT=json berth:check >/dev/null
  API="$(docker port "$NAME" 5000/tcp | head -n1)"
  ADMIN="$(docker port "$NAME" 5001/tcp | head -n1)"
  for _ in $(seq 1 60); do
    curl -fsS "http://$ADMIN/readyz" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  docker logs "$NAME" >&2
  echo "the container did not become ready" >&2
  exit 1
}
start
[ "$(docker exec "$NAME" id -u)" = 10001 ] || { echo "the process is not uid 10001" >&2; exit 1; }
if docker exec "$NAME" sh -c 'echo x > /usr/local/bin/probe' 2>/dev/null; then
  echo "the root filesystem is writable" >&2; exit 1
fi

echo "image: push and pull with skopeo"
mkdir -p "$WORK/app/bin"
cp "$(command -v busybox)" "$WORK/app/bin/busybox"
printf 'FROM scratch\nCOPY bin/busybox /bin/busybox\nCMD ["/bin/busybox","true"]\n' > "$WORK/app/Dockerfile"
docker build -q -t berth-check/app:1 "$WORK/app" >/dev/null
skopeo copy -q --dest-tls-verify=false docker-daemon:berth-check/app:1 "docker://$API/check/app:1"
pushed="$(skopeo inspect --tls-verify=false --format '{{.Digest}}' "docker://$API/check/app:1")"
# Captured first: grep -q ends early, which pipefail would count as the producer failing.
metrics="$(curl -fsS "http://$ADMIN/metrics")"
grep -q 'berth_http_requests_total{operation="put_manifest",status="201"}' <<<"$metrics" \
  || { echo "the push is not in the metrics" >&2; exit 1; }
log="$(docker logs "$NAME" 2>&1)"
grep -q '"operation":"put_manifest".*"target":"berth::access"' <<<"$log" \
  || { echo "the push is not in the access log" >&2; exit 1; }

echo "image: the registry's data outlives the container"
docker rm -f "$NAME" >/dev/null
start
skopeo copy -q --src-tls-verify=false "docker://$API/check/app:1" "dir:$WORK/pulled"
pulled="sha256:$(sha256sum "$WORK/pulled/manifest.json" | cut -d' ' -f1)"
[ "$pushed" = "$pulled" ] || { echo "pulled $pulled, pushed $pushed" >&2; exit 1; }
docker image rm -f berth-check/app:1 >/dev/null
echo "container image: all checks passed"
