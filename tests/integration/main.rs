//! Integration tests: the real `berth` binary over HTTP, on the backend `BERTH_TEST_BACKEND`
//! names (see `util.rs`).

mod api;
mod auth;
mod auth_clients;
mod clients;
mod cluster;
mod errors;
mod faults;
mod gc;
mod hardening;
mod image;
mod library;
mod next_spec;
mod observability;
mod options;
mod production;
mod resilience;
mod scaleout;
mod scrub;
mod services;
#[cfg(feature = "otel")]
mod telemetry;
mod util;
