#!/usr/bin/env bash
# Builds Berth's container image (deploy/Dockerfile, target prebuilt: FROM scratch) from a
# host-built binary, with the libraries and certificates taken from a Debian image made with
# debootstrap (no image registry is needed); checks that it holds nothing but what Berth needs
# to run and stays within its size budget; then runs it the way the Helm chart does - non-root,
# read-only root filesystem, no capabilities - and pushes and pulls an image through it with
# skopeo, across a container restart.
#   BERTH_IMAGE_BINARY   binary to put in the image [default: the integration suite's build of
#                        target/debug/berth, default features]
#   BERTH_RUNTIME_IMAGE  Debian image the libraries come from [default: local/bookworm:base,
#                        made here when missing]
#   BERTH_IMAGE_MAX_MB   most an image of a binary named by BERTH_IMAGE_BINARY (a release
#                        build) may weigh, in MB (10^6 bytes) [default: 40]. Whatever the
#                        binary, all the rest of the image together stays under 6 MB.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE="${BERTH_RUNTIME_IMAGE:-local/bookworm:base}"
BUDGET_MB="${BERTH_IMAGE_MAX_MB:-40}"
MAX_MB="$BUDGET_MB"
REST_MAX_MB=6
BINARY="${BERTH_IMAGE_BINARY:-}"
if [ -z "$BINARY" ]; then
  # A debug build is larger than what ships: the image's total budget is for release builds.
  MAX_MB=""
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
mkdir -p "$WORK/context/deploy"
cp deploy/image-rootfs.sh "$WORK/context/deploy/"
# The image's build strips the binary; stripping its debug information here first only spares
# sending hundreds of MB of it to the Docker engine.
objcopy --strip-debug "$BINARY" "$WORK/context/berth"
# COPY keeps the file's mode, and the image's user is not its owner: whatever umask built it,
# the binary must be executable by everyone.
chmod 0755 "$WORK/context/berth"
docker build -q -f deploy/Dockerfile --target prebuilt \
  --build-arg RUNTIME_IMAGE="$BASE" --build-arg BERTH_BINARY=berth \
  -t berth:check "$WORK/context" >/dev/null
user="$(docker image inspect -f '{{.Config.User}}' berth:check)"
[ "$user" = "10001:10001" ] || { echo "the image runs as '$user', not a non-root user" >&2; exit 1; }

echo "image: only the binary, its libraries, certificates and the user's entry"
docker rm -f "$NAME" >/dev/null 2>&1 || true
docker create --name "$NAME" berth:check >/dev/null
docker export "$NAME" > "$WORK/image.tar"
docker rm "$NAME" >/dev/null
tar -tf "$WORK/image.tar" | sed 's|/$||' | sort > "$WORK/files"
# Docker adds the first line's paths to every container: the mount points of its own files.
unexpected="$(grep -Ev '^(\.dockerenv|dev(/.*)?|proc|sys|etc/(hosts|hostname|resolv\.conf|mtab))$' "$WORK/files" \
  | grep -Ev '^(etc|etc/ssl|etc/ssl/certs|usr|usr/local|usr/local/bin|var|var/lib|tmp|lib|lib64|usr/lib|(usr/)?lib(64)?/[a-z0-9_]+-linux-gnu)$' \
  | grep -Ev '^(usr/local/bin/berth|var/lib/berth|etc/(passwd|group|nsswitch\.conf)|etc/ssl/certs/ca-certificates\.crt)$' \
  | grep -Ev '^(usr/)?lib(64)?/([a-z0-9_]+-linux-gnu/)?(ld-linux[-a-z0-9_.]*\.so\.[0-9]+|lib[a-z0-9_+-]+\.so(\.[0-9]+)*)$' || true)"
[ -z "$unexpected" ] || { echo "the image holds more than Berth needs to run:" >&2; echo "$unexpected" >&2; exit 1; }
libraries="$(grep -Ec '\.so(\.[0-9]+)*$' "$WORK/files" || true)"
[ "$libraries" -ge 2 ] || { echo "the image holds $libraries shared libraries: not even the C library and its loader" >&2; exit 1; }
echo "  $(wc -l < "$WORK/files") paths, $libraries of them shared libraries, no shell"

size="$(docker image inspect -f '{{.Size}}' berth:check)"
binary_size="$(tar -xOf "$WORK/image.tar" usr/local/bin/berth | wc -c)"
rm "$WORK/image.tar"
rest=$((size - binary_size))
echo "  $size bytes: the binary $binary_size, the rest $rest"
[ "$rest" -le $((REST_MAX_MB * 1000000)) ] \
  || { echo "the image holds $rest bytes besides the binary, more than $REST_MAX_MB MB" >&2; exit 1; }
if [ -n "$MAX_MB" ]; then
  [ "$size" -le $((MAX_MB * 1000000)) ] \
    || { echo "the image weighs $size bytes, more than $MAX_MB MB" >&2; exit 1; }
else
  echo "  (a debug build: the $BUDGET_MB MB budget is checked for a release build, BERTH_IMAGE_BINARY=target/release/berth)"
fi

echo "image: running read-only, non-root, without capabilities"
start() {
  docker run -d --name "$NAME" --read-only --cap-drop ALL --security-opt no-new-privileges \
    -v "$NAME:/var/lib/berth" --tmpfs /tmp -p 127.0.0.1::5000 -p 127.0.0.1::5001 \
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
# There is no shell in the image to ask: the engine lists the process's credentials, and
# refuses to write to a read-only root (that the registry works so is what the push and pull
# below show).
uids="$(docker top "$NAME" -o pid,uid,euid,suid,fsuid | awk 'NR == 2 {print $2, $3, $4, $5}')"
[ "$uids" = "10001 10001 10001 10001" ] || { echo "the process runs as uids '$uids', not 10001" >&2; exit 1; }
echo probe > "$WORK/probe"
if refused="$(docker cp "$WORK/probe" "$NAME:/usr/local/bin/probe" 2>&1)"; then
  echo "the root filesystem is writable" >&2; exit 1
fi
grep -qi "read-only" <<<"$refused" || { echo "docker cp failed, but not for a read-only root: $refused" >&2; exit 1; }

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
