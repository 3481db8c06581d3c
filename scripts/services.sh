#!/usr/bin/env bash
# Installs and starts what Berth's tests need, on a fresh Debian machine or this one:
# OCI clients (skopeo, podman, buildah, the Docker engine and its containerd, oras-py, Helm's
# SDK, docker-compose, debootstrap for locally built images), headless Chromium and chromedriver
# for the web UI's browser tests, HAProxy for the scale-out tests,
# a running Postgres at
# 127.0.0.1:5432, and Garage (a real S3-compatible store) on 127.0.0.1:3900. Source it: it
# exports the S3 settings.
# Idempotent: whatever is already installed or running is left as is.

berth_services_start() {
  local need=()
  for tool in skopeo podman buildah busybox haproxy curl psql tar gzip dockerd ctr runuser \
              debootstrap docker-compose objcopy docker-registry chromium chromedriver; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
  done
  if [ "${#need[@]}" -gt 0 ]; then
    echo "installing OCI clients and tools (missing: ${need[*]})" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
      skopeo podman buildah busybox-static haproxy uidmap fuse-overlayfs slirp4netns curl \
      postgresql-client tar gzip ca-certificates docker.io containerd util-linux \
      debootstrap docker-compose binutils docker-registry chromium chromium-driver >/dev/null
  fi
  if ! python3 -c 'import oras.client, helm_python' >/dev/null 2>&1; then
    echo "installing oras-py and helm-python-sdk" >&2
    python3 -m pip install -q oras helm-python-sdk >/dev/null
  fi

  # The Docker engine (the docker client tests push and pull through it).
  if ! docker info >/dev/null 2>&1; then
    echo "starting dockerd" >&2
    nohup dockerd > "${TMPDIR:-/tmp}/berth-dockerd.log" 2>&1 < /dev/null &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    if ! docker info >/dev/null 2>&1; then
      echo "dockerd did not start:" >&2; tail -n 20 "${TMPDIR:-/tmp}/berth-dockerd.log" >&2
      return 1
    fi
  fi

  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    echo "starting Postgres" >&2
    if [ -d /etc/postgresql ]; then
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    fi
    for _ in $(seq 1 60); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.5; done
  fi
  if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    echo "Postgres is not reachable at 127.0.0.1:5432; the Postgres backends cannot be tested" >&2
    return 1
  fi

  # Remember whether Garage was already running, so that callers stop only what they started.
  BERTH_STARTED_GARAGE=1
  if [ -f "${GARAGE_DIR:-${TMPDIR:-/tmp}/garage-ci}/garage.pid" ] \
     && kill -0 "$(cat "${GARAGE_DIR:-${TMPDIR:-/tmp}/garage-ci}/garage.pid")" 2>/dev/null; then
    BERTH_STARTED_GARAGE=0
  fi
  export BERTH_STARTED_GARAGE
  # shellcheck source=scripts/garage.sh
  source "$(dirname "${BASH_SOURCE[0]}")/garage.sh" start
}

berth_services_start
