//! Durability proven by enumeration, not argued: the registry over stores that fail on
//! purpose ([`faulty`]), driven by clients that behave as real ones ([`client`]) through
//! [`workflows`], with every fault kind injected at every store call ([`enumerate`]) and with
//! seeded interleavings of concurrent actors ([`explore`]); each run ends with the invariants
//! checked ([`invariants`]).
//!
//! `cargo test --test simulation` runs every workflow on both backends and a short
//! exploration; `scripts/simulate.sh SEEDS` runs a long one; `-- --ignored` runs the
//! workflows on Postgres + S3 with replies cut by proxies (it needs both servers, as
//! `scripts/test.sh` provides). To debug: `BERTH_SIM_CALL=k` limits an enumeration to call k,
//! `BERTH_SIM_DEBUG=1` prints each case's timings, its census around collection and every
//! store call slower than 30 ms.

mod client;
mod enumerate;
mod explore;
mod faulty;
mod invariants;
mod net;
#[path = "../common/proxy.rs"]
mod proxy;
#[allow(dead_code)]
#[path = "../integration/services.rs"]
mod services;
mod workflows;
mod world;

use std::sync::OnceLock;
use std::time::Instant;

use world::Backend;

/// Whether `BERTH_SIM_DEBUG` asks for timings on stderr.
pub fn debug() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("BERTH_SIM_DEBUG").is_some())
}

async fn enumerate_workflow(backend: Backend, name: &str) {
    enumerate::enumerate(backend, &workflows::named(name))
        .await
        .assert_passed();
}

/// One test per workflow and backend, so that they run in parallel and fail by name.
macro_rules! enumerated {
    ($($workflow:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $workflow() {
                    crate::enumerate_workflow(crate::Backend::Memory, stringify!($workflow)).await;
                }
            )*
        }
        mod sqlite_dir {
            $(
                #[tokio::test]
                async fn $workflow() {
                    crate::enumerate_workflow(crate::Backend::SqliteDir, stringify!($workflow)).await;
                }
            )*
        }
        #[test]
        fn every_workflow_is_enumerated() {
            let tested = [$(stringify!($workflow)),*];
            for workflow in workflows::all() {
                assert!(tested.contains(&workflow.name), "{} has no test", workflow.name);
            }
        }
    };
}

/// Calls the macro `$m` with the name of every workflow (`workflows::all`).
macro_rules! every_workflow {
    ($m:ident) => {
        $m!(
            monolithic_push,
            chunked_push,
            chunked_resume,
            big_blob_push,
            mount_from,
            mount_anywhere,
            index_push,
            referrer_push,
            tag_move,
            manifest_delete,
            blob_delete,
            gc_pass,
            gc_untagged,
            maintenance,
            scrub_repair,
            heal_push,
            cancel_upload,
        );
    };
}

every_workflow!(enumerated);

async fn cut_replies(name: &str) {
    enumerate::enumerate_cuts(&workflows::named(name))
        .await
        .assert_passed();
}

/// Every workflow on Postgres + S3 with the reply to each `COMMIT` and each S3 completion cut
/// in turn. They need both servers: `scripts/test.sh` starts them and runs these with
/// `--ignored`.
macro_rules! cut {
    ($($workflow:ident),* $(,)?) => {
        mod postgres_s3_cut_replies {
            #[test]
            fn every_workflow_is_cut() {
                let cut = [$(stringify!($workflow)),*];
                for workflow in crate::workflows::all() {
                    assert!(cut.contains(&workflow.name), "{} is not cut", workflow.name);
                }
            }
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs Postgres and an S3 server (BERTH_TEST_DATABASE_URL, AWS_ENDPOINT_URL, S3_BUCKET); scripts/test.sh runs it"]
                async fn $workflow() {
                    crate::cut_replies(stringify!($workflow)).await;
                }
            )*
        }
    };
}

every_workflow!(cut);

/// Seeds explored by default (`BERTH_SIM_SEEDS` for more, from `BERTH_SIM_FIRST_SEED`).
const SHORT_RUN: u64 = 40;
/// Probability of a fault at each store call during exploration.
const FAULT_RATE: f64 = 0.02;

async fn explore(backend: Backend) {
    let seeds: u64 = std::env::var("BERTH_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SHORT_RUN);
    let first: u64 = std::env::var("BERTH_SIM_FIRST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let started = Instant::now();
    let mut failures = Vec::new();
    for seed in first..first + seeds {
        if let Err(e) = explore::run_seed(backend, seed, FAULT_RATE).await {
            failures.push(e);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "explored {seeds} seeds from {first} on {} in {secs:.1} s ({:.2} seeds/s), {} failed",
        backend.name(),
        seeds as f64 / secs,
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn exploration_on_memory() {
    explore(Backend::Memory).await;
}

#[tokio::test]
async fn exploration_on_sqlite_and_a_directory() {
    explore(Backend::SqliteDir).await;
}

/// A seed is a whole schedule: run twice, it makes the same calls in the same order and
/// injects the same faults.
#[tokio::test]
async fn a_seed_replays_its_schedule() {
    for seed in [3, 11, 42] {
        let first = explore::run_seed(Backend::Memory, seed, FAULT_RATE)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let again = explore::run_seed(Backend::Memory, seed, FAULT_RATE)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            first.calls.len() > 100,
            "seed {seed} made {} calls",
            first.calls.len()
        );
        assert_eq!(first, again, "seed {seed} ran differently the second time");
    }
}
