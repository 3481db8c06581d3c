//! Integration tests: the real `berth` binary over HTTP, on the backend `BERTH_TEST_BACKEND`
//! names (see `util/`).
//!
//! The target has its own harness (`harness = false`, `harness.rs` on `libtest-mimic`), with
//! libtest's command line: name filters, `--skip`, `--exact`, `--list`, `--test-threads`,
//! `--ignored` and `--include-ignored`. Each module lists its tests at its end (`trials!`):
//! each `async fn` runs on a fresh Tokio runtime built as `#[tokio::test]` builds it
//! (current-thread, or multi-threaded where the list says so); a panic is a failure. Output is
//! not captured: what a test prints goes straight to the terminal (`--nocapture` is accepted).
//!
//! A test that did not run never reports that it passed; nothing in a test's body skips it:
//!
//! - a test that needs what the backend does not have (`harness::Needs`: state that outlives
//!   the process, Postgres, S3 storage, blobs on local disk, …) is reported as **ignored**, and
//!   the ignored tests are listed with their reasons on standard error after the run;
//! - the backend configuration's services (Postgres; S3 for `postgres-s3`; see `services.rs`)
//!   are looked for once, before any test runs, and only when a selected test uses them
//!   (`--list` looks for nothing). If they are missing, every test that uses them is ignored
//!   with what is missing, or fails when `BERTH_TEST_REQUIRE_SERVICES=1` (as in CI);
//! - the image test (`image.rs`) is ignored unless `BERTH_TEST_IMAGE` names an image and a
//!   Docker engine runs (with the image named but no Docker, it fails when
//!   `BERTH_TEST_REQUIRE_SERVICES=1`); its containers failing to start, which only the test
//!   can find out, fail it;
//! - tests that drive a client tool (skopeo, podman, Docker, oras, …; `util::require`) or the
//!   scale-out cluster's programs fail when the tool is missing: `scripts/test.sh` installs them;
//! - an ignored test run anyway (`--ignored`, `--include-ignored`) fails with its reason.

mod api;
mod auth;
mod auth_clients;
mod auth_fixtures;
mod cli;
mod clients;
mod cluster;
mod errors;
#[cfg(all(feature = "events", feature = "auth", feature = "mirror"))]
mod events;
mod faults;
mod gc;
mod hardening;
mod harness;
mod image;
mod library;
#[cfg(feature = "mirror")]
mod mirror;
mod next_spec;
mod observability;
mod options;
mod production;
mod resilience;
mod scaleout;
mod scrub;
mod services;
mod stress;
#[cfg(feature = "otel")]
mod telemetry;
#[cfg(feature = "tls")]
mod tls;
#[cfg(all(feature = "ui", feature = "auth"))]
mod ui;
#[cfg(feature = "mirror")]
mod upstream;
mod util;

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let mut tests = Vec::new();
    tests.extend(api::trials());
    tests.extend(auth::trials());
    tests.extend(auth_clients::trials());
    tests.extend(cli::trials());
    tests.extend(clients::trials());
    tests.extend(errors::trials());
    #[cfg(all(feature = "events", feature = "auth", feature = "mirror"))]
    tests.extend(events::trials());
    tests.extend(faults::trials());
    tests.extend(gc::trials());
    tests.extend(hardening::trials());
    tests.extend(image::trials());
    tests.extend(library::trials());
    #[cfg(feature = "mirror")]
    tests.extend(mirror::trials());
    tests.extend(next_spec::trials());
    tests.extend(observability::trials());
    tests.extend(options::trials());
    tests.extend(production::trials());
    tests.extend(resilience::trials());
    tests.extend(scaleout::trials());
    tests.extend(scrub::trials());
    #[cfg(feature = "otel")]
    tests.extend(telemetry::trials());
    #[cfg(feature = "tls")]
    tests.extend(tls::trials());
    #[cfg(all(feature = "ui", feature = "auth"))]
    tests.extend(ui::trials());
    #[cfg(feature = "mirror")]
    tests.extend(upstream::trials());
    harness::run(args, tests).exit();
}
