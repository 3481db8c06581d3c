#!/usr/bin/env bash
# Berth's full test suite: lints, unit tests, the build without default features, docs and
# examples, and the integration suite against the real binary on every backend
# (SQLite + directory, Postgres + directory, Postgres + S3, memory), the dependency tree
# (scripts/check-dependencies.sh), the deployment artifacts
# (Helm chart, Terraform module) and the container image. Installs and starts
# what it needs (see scripts/services.sh); fails, never skips, when a service is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# Files this suite makes go into container images, whose non-root users must read and run
# them: a restrictive umask (077) on the runner would make them root-only.
umask 022

# Each step's wall time is printed when the next one starts, and all of them at the end, so
# that what CI's time budget goes to is on record in every run's log.
STEP_NAME=""
STEP_START=$SECONDS
STEP_TIMES=()
step_done() {
  [ -n "$STEP_NAME" ] && STEP_TIMES+=("$(printf '%5d s  %s' $((SECONDS - STEP_START)) "$STEP_NAME")")
  STEP_NAME="$*"
  STEP_START=$SECONDS
}
step() { step_done "$*"; printf '\n==> %s\n' "$*"; }
SUITE_START=$SECONDS
# The dependency checkers compile for a few minutes: in the background, while the services
# install (which mostly waits on the network and on one build of its own).
# In a session of its own, so that a suite that fails before it is waited for stops all of it
# (cargo's compilers included), not only the script.
DEPENDENCY_TOOLS_LOG="$(mktemp)"
setsid --wait scripts/check-dependencies.sh --install >"$DEPENDENCY_TOOLS_LOG" 2>&1 &
DEPENDENCY_TOOLS=$!
BERTH_STARTED_GARAGE=0
# (Under set -e a failing command in the trap would set the suite's exit status: the group is
# usually gone by then.)
trap 'kill -- -"$DEPENDENCY_TOOLS" 2>/dev/null || true; rm -f "$DEPENDENCY_TOOLS_LOG"
      if [ "$BERTH_STARTED_GARAGE" = 1 ]; then scripts/garage.sh stop >/dev/null 2>&1 || true; fi' EXIT
step "install and start services"
source scripts/services.sh

# The services scripts/services.sh started; a test that needs one it cannot find fails.
export BERTH_TEST_DATABASE_URL="${BERTH_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export BERTH_TEST_REQUIRE_SERVICES=1

step "format and lints"
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings

step "dependencies: none unused, licences, no test-only crate, duplicate versions"
wait "$DEPENDENCY_TOOLS" || { cat "$DEPENDENCY_TOOLS_LOG" >&2; echo "installing the dependency checkers failed" >&2; exit 1; }
scripts/check-dependencies.sh

step "core library without default features, and the smallest binary"
# Type-checked, not built: a build would compile every dependency again, optimized, for a
# feature set nothing else uses (minutes), and what it adds over a check is the linker.
cargo check --lib --no-default-features
cargo check --bin berth --no-default-features --features cli

step "unit tests"
cargo test --lib --bins

step "fault simulation: every fault at every store call, seeded interleavings (memory; SQLite + directory)"
# Most of a case waits for syncs and the database: four at a time keep two cores busy.
cargo test --test simulation -- --test-threads 4

step "fault simulation on Postgres + S3: each COMMIT's and each S3 completion's reply cut in turn"
cargo test --test simulation -- --ignored --test-threads 4 postgres_s3_cut_replies

step "fuzz targets: every committed input replayed, then 3 s of mutations per parser"
scripts/fuzz.sh --ci

step "documentation, doc tests and examples"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --lib
cargo test --doc
cargo run --quiet --example embed -- --demo

for backend in ${BERTH_TEST_BACKENDS:-sqlite postgres postgres-s3 memory}; do
  step "integration suite on $backend"
  BERTH_TEST_BACKEND="$backend" cargo test --test integration
done
step "deployment artifacts: Helm chart and Terraform module"
scripts/check-deploy.sh

step "container image: built, run read-only and non-root, pushed to and pulled from"
scripts/check-image.sh

step "containers: Postgres and S3 from testcontainers (local images), and the image among them"
scripts/local-images.sh
# The same fixtures a laptop with only Docker uses, with images built here: the API end to
# end, events and the image, on Postgres and S3 in containers. Everything else ran above on
# the same backend with the same binary; only where Postgres and S3 come from differs. The
# events test on the scale-out cluster brings its own Postgres and S3 and ran above.
env -u BERTH_TEST_DATABASE_URL -u AWS_ENDPOINT_URL -u S3_BUCKET \
  BERTH_TEST_BACKEND=postgres-s3 BERTH_TEST_IMAGE=berth:check \
  BERTH_TEST_POSTGRES_IMAGE=local/postgres:15 BERTH_TEST_S3_IMAGE=local/garage:2 \
  cargo test --test integration -- $(for module in auth auth_clients clients cluster errors \
    faults gc hardening library mirror next_spec observability options production resilience \
    scaleout scrub stress telemetry tls upstream; do printf -- '--skip %s:: ' "$module"; done) \
    --skip events::a_cluster_behind_haproxy

step "the development compose stack, with local images"
scripts/check-compose.sh

step_done ""
echo
echo "time per step:"
printf '%s\n' "${STEP_TIMES[@]}"
printf '%5d s  in all\n' $((SECONDS - SUITE_START))
echo "all tests passed"
