//! The suite's own test harness (the `integration` target has `harness = false`): each module
//! lists its tests with `trials!`, saying what each needs of the backend and its environment,
//! and `run` turns them into `libtest_mimic` trials. A test whose needs are not met is
//! registered as ignored, with its reason printed after the run; run anyway
//! (`--ignored`, `--include-ignored`) it fails with that reason, so that a test that did not
//! run never reports that it passed.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;

use libtest_mimic::{Arguments, Conclusion, Failed, Trial};

use crate::services;
use crate::util::Backend;

/// What a test needs besides the suite's backend configuration (and its services).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// State that outlives a process (restarts, `berth gc`, `berth scrub`, bounded server
    /// memory): not the memory backend, whose state and blobs live in RAM by design.
    Persistence,
    /// A database (to lock, to fill): not the memory backend, which has none.
    Database,
    /// Processes sharing one registry's state: not the memory backend, whose processes share
    /// nothing by design.
    SharedState,
    /// Blobs in a local directory: SQLite or Postgres with filesystem storage.
    LocalBlobs,
    /// The `sqlite` backend: SQLite and the blobs in one local directory.
    Sqlite,
    /// A Postgres database: the `postgres` and `postgres-s3` backends.
    Postgres,
    /// S3 storage: the `postgres-s3` backend.
    S3,
    /// Tests that bring their own Postgres and S3 and run once, on the `postgres-s3` backend.
    PostgresS3Run,
    /// A container image to test, named by `BERTH_TEST_IMAGE`.
    Image,
    /// A Docker engine to run containers in (a service: see `services.rs`).
    Docker,
}

impl Needs {
    /// Why a test needing this cannot run here, if it cannot; whether it is a missing service
    /// (which fails rather than being ignored when `BERTH_TEST_REQUIRE_SERVICES=1`).
    fn unmet(self, backend: Backend) -> Option<(String, bool)> {
        let met = match self {
            Needs::Persistence => backend.persistent(),
            Needs::Database => backend != Backend::Memory,
            Needs::SharedState => backend.shareable(),
            Needs::LocalBlobs => matches!(backend, Backend::Sqlite | Backend::Postgres),
            Needs::Sqlite => backend == Backend::Sqlite,
            Needs::Postgres => matches!(backend, Backend::Postgres | Backend::PostgresS3),
            Needs::S3 => backend.uses_s3(),
            Needs::PostgresS3Run => backend == Backend::PostgresS3,
            Needs::Image => std::env::var("BERTH_TEST_IMAGE").is_ok_and(|v| !v.is_empty()),
            Needs::Docker => services::docker_available().is_ok(),
        };
        let reason = match self {
            Needs::Persistence => {
                "needs state that outlives the process (the memory backend keeps it in RAM)"
            }
            Needs::Database => "needs a database (the memory backend has none)",
            Needs::SharedState => {
                "needs processes that share state (memory-backend processes share nothing)"
            }
            Needs::LocalBlobs => "needs blobs on local disk",
            Needs::Sqlite => "needs the sqlite backend (SQLite and blobs in one local directory)",
            Needs::Postgres => "needs Postgres",
            Needs::S3 => "needs S3 storage",
            Needs::PostgresS3Run => {
                "brings its own Postgres and S3 and runs once, with BERTH_TEST_BACKEND=postgres-s3"
            }
            Needs::Image => {
                "needs an image to test: build one with scripts/check-image.sh and set BERTH_TEST_IMAGE=berth:check"
            }
            Needs::Docker => "needs a Docker engine (no /var/run/docker.sock, no DOCKER_HOST)",
        };
        (!met).then(|| (reason.to_owned(), self == Needs::Docker))
    }
}

/// How a test's `async fn` runs: on a fresh runtime, built as `#[tokio::test]` builds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    CurrentThread,
    MultiThread { worker_threads: usize },
}

type AsyncBody = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A test's code: a plain function, or an `async fn`.
pub enum Body {
    Plain(Box<dyn FnOnce() + Send>),
    Async(AsyncBody),
}

/// Turns a test function, plain or `async`, into a `Body`; `M` tells the two apart.
pub trait IntoBody<M> {
    fn into_body(self) -> Body;
}

pub struct PlainFn;
pub struct AsyncFn;

impl<F> IntoBody<PlainFn> for F
where
    F: FnOnce() + Send + 'static,
{
    fn into_body(self) -> Body {
        Body::Plain(Box::new(self))
    }
}

impl<F, Fut> IntoBody<AsyncFn> for F
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    fn into_body(self) -> Body {
        Body::Async(Box::new(move || Box::pin(self())))
    }
}

/// One test: its name (`module::function`), what it needs and its code.
pub struct Test {
    name: String,
    needs: Vec<Needs>,
    flavor: Flavor,
    own_services: bool,
    body: Body,
}

impl Test {
    /// `function` of the module at `module_path` (`integration::api`), named `api::function`.
    pub fn new<M>(module_path: &str, function: &str, body: impl IntoBody<M>) -> Test {
        let module = module_path
            .split_once("::")
            .map_or(module_path, |(_, module)| module);
        Test {
            name: format!("{module}::{function}"),
            needs: Vec::new(),
            flavor: Flavor::CurrentThread,
            own_services: false,
            body: body.into_body(),
        }
    }

    /// Runs on a multi-threaded runtime with `worker_threads` workers, like
    /// `#[tokio::test(flavor = "multi_thread", worker_threads = N)]`.
    pub fn multi_thread(mut self, worker_threads: usize) -> Test {
        assert!(
            matches!(self.body, Body::Async(_)),
            "{}: only an async test has a runtime",
            self.name
        );
        self.flavor = Flavor::MultiThread { worker_threads };
        self
    }

    /// Runs only where `needs` are met; elsewhere it is ignored, with the reason.
    pub fn needs(mut self, needs: Needs) -> Test {
        self.needs.push(needs);
        self
    }

    /// Brings its own services (a cluster, containers): does not use the backend
    /// configuration's Postgres and S3.
    pub fn own_services(mut self) -> Test {
        self.own_services = true;
        self
    }

    /// Runs the test; a panic is its failure (`libtest_mimic` catches it).
    fn run(self) {
        match self.body {
            Body::Plain(body) => body(),
            Body::Async(body) => {
                let runtime = match self.flavor {
                    Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build(),
                    Flavor::MultiThread { worker_threads } => {
                        tokio::runtime::Builder::new_multi_thread()
                            .worker_threads(worker_threads)
                            .enable_all()
                            .build()
                    }
                };
                let runtime = runtime.expect("building the test's Tokio runtime");
                runtime.block_on(body());
            }
        }
    }
}

/// `pub fn trials() -> Vec<Test>` for the module it is called in: each test function's name,
/// then what it needs and its runtime as calls of `Test`'s methods, e.g.
///
/// ```ignore
/// trials! {
///     pushes_a_blob;
///     gc_keeps_what_is_referenced.needs(Persistence);
///     stress.multi_thread(4);
/// }
/// ```
macro_rules! trials {
    ($($function:ident $(. $method:ident ( $($arg:expr),* ))* ;)*) => {
        /// This module's tests (see `harness.rs`).
        pub fn trials() -> Vec<$crate::harness::Test> {
            #[allow(unused_imports)]
            use $crate::harness::Needs::*;
            vec![$(
                $crate::harness::Test::new(module_path!(), stringify!($function), $function)
                    $(.$method($($arg),*))*
            ),*]
        }
    };
}
pub(crate) use trials;

/// Whether `name` is run under `args`' name filters (as `Arguments::is_filtered_out` decides
/// it for a trial without a kind).
fn selected(args: &Arguments, name: &str) -> bool {
    let matches = |pattern: &String| {
        if args.exact {
            name == pattern
        } else {
            name.contains(pattern.as_str())
        }
    };
    args.filter.as_ref().is_none_or(matches) && !args.skip.iter().any(matches)
}

/// The backend configuration's services, or why they are missing (for the Postgres
/// configurations: Postgres, and S3 for `postgres-s3`), found once before any test runs.
fn configuration_services(backend: Backend) -> Result<(), String> {
    if matches!(backend, Backend::Postgres | Backend::PostgresS3) {
        services::postgres()?;
    }
    if backend.uses_s3() {
        services::s3()?;
    }
    Ok(())
}

/// Runs `tests` as `args` asks; reports the ignored ones and why on standard error.
pub fn run(mut args: Arguments, mut tests: Vec<Test>) -> Conclusion {
    // libtest reads the thread count from the environment too.
    if args.test_threads.is_none() {
        args.test_threads = std::env::var("RUST_TEST_THREADS")
            .ok()
            .and_then(|v| v.parse().ok());
    }
    tests.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(pair) = tests.windows(2).find(|pair| pair[0].name == pair[1].name) {
        panic!("{} is registered twice", pair[0].name);
    }
    let backend = Backend::current();
    let backend_name = std::env::var("BERTH_TEST_BACKEND").unwrap_or_else(|_| "sqlite".into());
    let required = services::required();

    // Why each test cannot run here (empty: it can), and whether that is a missing service.
    let unmet: Vec<Vec<(String, bool)>> = tests
        .iter()
        .map(|test| test.needs.iter().filter_map(|n| n.unmet(backend)).collect())
        .collect();
    // The configuration's services are looked for (containers may be started) only when a
    // selected test would use them; listing the tests looks for nothing.
    let uses_configuration = |i: usize| {
        let test: &Test = &tests[i];
        !test.own_services && unmet[i].is_empty() && selected(&args, &test.name)
    };
    let configuration = if !args.list && (0..tests.len()).any(uses_configuration) {
        configuration_services(backend)
    } else {
        Ok(())
    };

    let mut ignored = Vec::new();
    let mut trials = Vec::with_capacity(tests.len());
    for (test, mut unmet) in tests.into_iter().zip(unmet) {
        // Said once in the report, in full in a failure.
        let mut failure_detail = String::new();
        if let Err(why) = &configuration
            && !test.own_services
            && unmet.is_empty()
        {
            unmet.push((
                format!("needs the {backend_name} configuration's services, which are missing"),
                true,
            ));
            failure_detail = format!(": {why}");
        }
        let name = test.name.clone();
        if unmet.is_empty() {
            trials.push(Trial::test(name, move || {
                test.run();
                Ok(())
            }));
            continue;
        }
        let reasons = unmet
            .iter()
            .map(|(reason, _)| reason.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        // A missing service fails the tests that need it where services are required (CI);
        // a test that needs another backend or a chosen image stays ignored.
        let fails = required && unmet.iter().all(|(_, service)| *service);
        let failure = if fails {
            format!("{reasons}{failure_detail} (BERTH_TEST_REQUIRE_SERVICES=1)")
        } else {
            format!("{reasons}{failure_detail}; BERTH_TEST_BACKEND={backend_name}")
        };
        if !fails && selected(&args, &name) {
            ignored.push(format!("{name} ({reasons})"));
        }
        trials
            .push(Trial::test(name, move || Err(Failed::from(failure))).with_ignored_flag(!fails));
    }

    let conclusion = libtest_mimic::run(&args, trials);
    // Run anyway, they failed with their reasons above.
    let forced = args.ignored || args.include_ignored;
    if !args.list && !forced && !ignored.is_empty() {
        let mut report = String::from("\n");
        for line in &ignored {
            let _ = writeln!(report, "ignored on the {backend_name} backend: {line}");
        }
        if let Err(why) = &configuration {
            let _ = writeln!(
                report,
                "the {backend_name} configuration's services are missing: {why}"
            );
        }
        let count = match ignored.len() {
            1 => "1 test".to_owned(),
            n => format!("{n} tests"),
        };
        let _ = writeln!(
            report,
            "{count} ignored on the {backend_name} backend: they did not run (reasons above)"
        );
        eprint!("{report}");
    }
    conclusion
}
