#!/usr/bin/env bash
# Builds, without any image registry, the images the container tests use: a Debian base made
# with debootstrap (local/bookworm:base), Postgres 15 from Debian's packages
# (local/postgres:15) and Garage from the host's binary (local/garage:2). Each is built only
# when missing. Prints the environment that points the test fixtures at them.
set -euo pipefail
cd "$(dirname "$0")/.."

docker info >/dev/null 2>&1 || { echo "no Docker engine: scripts/services.sh starts one" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
built() { docker image inspect "$1" >/dev/null 2>&1; }

if ! built local/bookworm:base; then
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
  echo "building local/bookworm:base with debootstrap" >&2
  debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian >/dev/null
  rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb
  tar -C "$WORK/rootfs" -c . | docker import - local/bookworm:base >/dev/null
  rm -rf "$WORK/rootfs"
fi

if ! built local/postgres:15; then
  echo "building local/postgres:15" >&2
  mkdir "$WORK/postgres"
  cat > "$WORK/postgres/Dockerfile" <<'DOCKERFILE'
FROM local/bookworm:base
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null \
    && rm -rf /var/lib/apt/lists/*
USER postgres
RUN /usr/lib/postgresql/15/bin/initdb -D /var/lib/postgresql/data --auth=trust -U postgres >/dev/null \
    && echo "host all all 0.0.0.0/0 trust" >> /var/lib/postgresql/data/pg_hba.conf
EXPOSE 5432
CMD ["/usr/lib/postgresql/15/bin/postgres", "-D", "/var/lib/postgresql/data", \
     "-c", "listen_addresses=*", "-c", "unix_socket_directories=/tmp", "-c", "fsync=off"]
DOCKERFILE
  docker build -q -t local/postgres:15 "$WORK/postgres" >/dev/null
fi

if ! built local/garage:2; then
  echo "building local/garage:2" >&2
  GARAGE_BIN="${GARAGE_BIN:-$(command -v garage || echo "${CARGO_HOME:-$HOME/.cargo}/bin/garage")}"
  [ -x "$GARAGE_BIN" ] || { echo "no garage binary (scripts/garage.sh installs it)" >&2; exit 1; }
  mkdir "$WORK/garage"
  cp "$GARAGE_BIN" "$WORK/garage/garage"
  # The S3 port and region come from the environment (GARAGE_S3_PORT, default 3900, and
  # GARAGE_S3_REGION, default garage), so that the image can stand in for MinIO on 9000.
  cat > "$WORK/garage/garage-server" <<'SCRIPT'
#!/bin/sh
set -e
mkdir -p /var/lib/garage
cat > "$GARAGE_CONFIG_FILE" <<TOML
metadata_dir = "/var/lib/garage/meta"
data_dir = "/var/lib/garage/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "0.0.0.0:3901"
rpc_public_addr = "127.0.0.1:3901"
rpc_secret = "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"

[s3_api]
s3_region = "${GARAGE_S3_REGION:-garage}"
api_bind_addr = "0.0.0.0:${GARAGE_S3_PORT:-3900}"

[admin]
api_bind_addr = "0.0.0.0:3903"
TOML
# Creates the key GARAGE_DEFAULT_ACCESS_KEY/SECRET_KEY and the bucket GARAGE_DEFAULT_BUCKET.
exec garage server --single-node --default-bucket
SCRIPT
  chmod +x "$WORK/garage/garage-server"
  cat > "$WORK/garage/Dockerfile" <<'DOCKERFILE'
FROM local/bookworm:base
COPY garage garage-server /usr/local/bin/
ENV GARAGE_CONFIG_FILE=/var/lib/garage/garage.toml
EXPOSE 3900
CMD ["garage-server"]
DOCKERFILE
  docker build -q -t local/garage:2 "$WORK/garage" >/dev/null
fi
