//! Every fault at every call: a workflow runs once without faults to number its store calls,
//! then once for each call number k and each fault kind, injecting that fault at call k; each
//! run ends with the invariants checked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::faulty::{Fault, Injected};
use crate::workflows::Workflow;
use crate::world::{Backend, World, base_options};

/// What a case injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing: the baseline, numbering calls.
    Calm,
    /// This fault at this call.
    Call(u64, Fault),
    /// The reply to the n-th `COMMIT` is cut (Postgres behind its proxy).
    CutCommit(u64),
    /// The replies to the n-th S3 completion and the SDK's retries of it are cut.
    CutCompletion(u64),
}

/// How one run went.
pub struct Case {
    pub calls: u64,
    pub call_log: Vec<&'static str>,
    pub injected: Vec<Injected>,
    pub restarts: u32,
    /// `COMMIT`s and S3 completions seen, and replies cut (Postgres + S3 only).
    pub commits: u64,
    pub completions: u64,
    pub cut: u64,
    pub problems: Vec<String>,
}

/// Longest a case may take before it counts as hung.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// Replies cut in a row for one S3 completion: more than the SDK's attempts, so that the
/// registry sees the failure.
const S3_CUTS: u64 = 4;

/// Runs `workflow` on a fresh world with `plan`.
pub async fn run_case(backend: Backend, workflow: &Workflow, plan: Plan) -> Case {
    let mut options = base_options();
    (workflow.options)(&mut options);
    let t0 = Instant::now();
    let debug = crate::debug();
    let world = World::new(backend, options).await;
    if debug {
        eprintln!("world {:?}", t0.elapsed());
    }
    let client = Client::new(Arc::clone(&world));
    (workflow.setup)(Arc::clone(&client)).await;
    let setup_problems = client
        .complaints
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert!(
        setup_problems.is_empty(),
        "{} set up without faults: {setup_problems:?}",
        workflow.name
    );
    world.faults.arm(match plan {
        Plan::Call(k, fault) => Some((k, fault)),
        _ => None,
    });
    if let Some(net) = &world.net {
        match plan {
            Plan::CutCommit(n) => net.postgres.commits.arm(n, 1),
            _ => net.postgres.commits.arm(0, 0),
        }
        match plan {
            Plan::CutCompletion(n) => net.s3.completions.arm(n, S3_CUTS),
            _ => net.s3.completions.arm(0, 0),
        }
    }
    if debug {
        eprintln!("setup {:?}", t0.elapsed());
    }
    let ran = tokio::time::timeout(CASE_TIMEOUT, (workflow.run)(Arc::clone(&client))).await;
    if debug {
        eprintln!("run {:?}", t0.elapsed());
    }
    let calls = world.faults.calls();
    let call_log = world.faults.call_log();
    world.faults.disarm();
    let (commits, completions, cut) = match &world.net {
        Some(net) => {
            let counts = (
                net.postgres.commits.seen(),
                net.s3.completions.seen(),
                net.postgres.commits.cut() + net.s3.completions.cut(),
            );
            net.postgres.commits.disarm();
            net.s3.completions.disarm();
            counts
        }
        None => (0, 0, 0),
    };
    let mut problems = Vec::new();
    if ran.is_err() {
        problems.push(format!(
            "the workflow hung for {} s",
            CASE_TIMEOUT.as_secs()
        ));
    }
    problems.extend(crate::invariants::check(&world, &client).await);
    if debug {
        eprintln!("checked {:?}", t0.elapsed());
    }
    Case {
        calls,
        call_log,
        injected: world.faults.injected(),
        restarts: world.restarts(),
        commits,
        completions,
        cut,
        problems,
    }
}

/// What an enumeration covered.
#[derive(Debug, Default)]
pub struct Totals {
    pub calls: u64,
    pub cases: u64,
    /// Cases whose fault was never reached (the run made fewer calls than the baseline).
    pub unreached: u64,
    pub failures: Vec<String>,
}

impl Totals {
    /// Fails listing the failed cases, if any.
    pub fn assert_passed(&self) {
        assert!(
            self.failures.is_empty(),
            "{} of {} cases failed:\n{}",
            self.failures.len(),
            self.cases,
            self.failures.join("\n")
        );
    }
}

/// `workflow` run once without faults, which must pass.
async fn baseline(backend: Backend, workflow: &Workflow) -> Case {
    let calm = run_case(backend, workflow, Plan::Calm).await;
    assert!(
        calm.problems.is_empty(),
        "{} on {} fails without faults:\n  {}",
        workflow.name,
        backend.name(),
        calm.problems.join("\n  ")
    );
    calm
}

/// Runs `workflow` with every fault at every call; panics listing what failed.
pub async fn enumerate(backend: Backend, workflow: &Workflow) -> Totals {
    let started = Instant::now();
    let baseline = baseline(backend, workflow).await;
    let mut totals = Totals {
        calls: baseline.calls,
        ..Totals::default()
    };
    let only: Option<u64> = std::env::var("BERTH_SIM_CALL")
        .ok()
        .and_then(|v| v.parse().ok());
    for k in 1..=baseline.calls {
        if only.is_some_and(|o| o != k) {
            continue;
        }
        for fault in Fault::ALL {
            let case = run_case(backend, workflow, Plan::Call(k, fault)).await;
            totals.cases += 1;
            if case.injected.is_empty() {
                totals.unreached += 1;
            }
            if !case.problems.is_empty() {
                let at = baseline
                    .call_log
                    .get(k as usize - 1)
                    .copied()
                    .unwrap_or("?");
                totals.failures.push(format!(
                    "{} on {}: {fault:?} at call {k} ({at}), {} restarts, calls {:?}:\n    {}",
                    workflow.name,
                    backend.name(),
                    case.restarts,
                    case.call_log,
                    case.problems.join("\n    ")
                ));
            }
        }
    }
    println!(
        "{:<16} {:<10} {:>3} calls x {} faults = {:>4} cases ({} unreached) in {:>6.1} s, {} failed",
        workflow.name,
        backend.name(),
        totals.calls,
        Fault::ALL.len(),
        totals.cases,
        totals.unreached,
        started.elapsed().as_secs_f64(),
        totals.failures.len()
    );
    totals
}

/// Runs `workflow` on Postgres + S3 once for every `COMMIT` and every S3 completion of its
/// baseline, with that reply cut.
pub async fn enumerate_cuts(workflow: &Workflow) -> Totals {
    let started = Instant::now();
    let backend = Backend::PostgresS3;
    let baseline = baseline(backend, workflow).await;
    let mut totals = Totals {
        calls: baseline.commits + baseline.completions,
        ..Totals::default()
    };
    let plans = (1..=baseline.commits)
        .map(Plan::CutCommit)
        .chain((1..=baseline.completions).map(Plan::CutCompletion));
    for plan in plans {
        let case = run_case(backend, workflow, plan).await;
        totals.cases += 1;
        if case.cut == 0 {
            totals.unreached += 1;
        }
        if !case.problems.is_empty() {
            totals.failures.push(format!(
                "{} on {}: {plan:?}, {} commits and {} completions seen:\n    {}",
                workflow.name,
                backend.name(),
                case.commits,
                case.completions,
                case.problems.join("\n    ")
            ));
        }
    }
    println!(
        "{:<16} {:<10} {:>3} commits + {:>2} completions = {:>3} cases ({} unreached) in {:>6.1} s, {} failed",
        workflow.name,
        backend.name(),
        baseline.commits,
        baseline.completions,
        totals.cases,
        totals.unreached,
        started.elapsed().as_secs_f64(),
        totals.failures.len()
    );
    totals
}
