//! Test harness: the real `berth` binary on port 0 against a real backend, and a small client.
//!
//! The backend comes from `BERTH_TEST_BACKEND`: `sqlite` (default; SQLite and a local
//! directory), `postgres` (Postgres and a local directory), `postgres-s3` (Postgres and S3) or
//! `memory`. Postgres and S3 come from `services.rs` (the environment, or containers); each
//! test gets its own database and key prefix.
//!
//! By concern, all re-exported here (tests `use crate::util::*`):
//! - `server`: [`Backend`], [`Deployment`] and [`Server`], the processes under test;
//! - `client`: the HTTP [`Client`] and its [`Answer`]s, hand-written requests
//!   ([`RawConnection`]) and Prometheus readers;
//! - `s3` and `net`: the S3 server behind the scenes, and proxies that fail on purpose;
//! - `layout` and `tools`: OCI image layouts built by hand and the client tools (skopeo,
//!   podman, …) that push them;
//! - `random` and `proxy` (in `tests/common/`, shared with the simulation and the bench):
//!   pseudo-random data and the forwarding step of the S3 proxies;
//! - `pki`: certificates for TLS tests;
//! - `webdriver`: headless Chromium driven over WebDriver, for the web UI;
//! - here: digests, seeds, polling and files.
#![allow(dead_code)]

mod client;
mod layout;
mod net;
#[cfg(feature = "tls")]
mod pki;
#[path = "../../common/proxy.rs"]
mod proxy;
#[path = "../../common/random.rs"]
mod random;
mod s3;
mod server;
mod tools;
mod webdriver;

pub use client::*;
pub use layout::*;
pub use net::*;
#[cfg(feature = "tls")]
pub use pki::*;
pub use random::*;
pub use s3::*;
pub use server::*;
pub use tools::*;
pub use webdriver::*;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(data)))
}

pub fn unique_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    nanos ^ (std::process::id() as u64) << 32
}

/// Waits until `check` holds, polling.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Files under a directory, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
