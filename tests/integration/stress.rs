//! The garbage-collection stress workload: clients pushing, deleting and re-pushing the same
//! layers against collection passes, and the check that every manifest left is whole. Run by
//! `gc.rs` on one process and by `scaleout.rs` through the load balancer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::util::*;

/// What the stress workload did, for its report and assertions.
#[derive(Default)]
pub struct StressTally {
    pub pushes: AtomicU64,
    pub deletes: AtomicU64,
    pub mounts: AtomicU64,
    /// Manifest pushes refused because collection took a layer between the client's `HEAD`
    /// and its manifest: the client pushed the layer again, as real clients do.
    pub refused_then_repushed: AtomicU64,
    pub unavailable: AtomicU64,
}

/// Tiny deterministic generator, so that a failing run can be repeated from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        xorshift(&mut self.0) % n
    }
}

pub const STRESS_REPOS: [&str; 3] = ["stress/a", "stress/b", "stress/c"];

/// Sends a request again while the registry answers 503 (a lost lock race, a restarting
/// replica); any other 5xx fails the test.
async fn call_retrying(
    c: &Client,
    tally: &StressTally,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Answer {
    for _ in 0..50 {
        let a = c.send(build()).await;
        if a.status == StatusCode::SERVICE_UNAVAILABLE {
            tally.unavailable.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        assert!(
            !a.status.is_server_error(),
            "{}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
        return a;
    }
    panic!("the registry stayed unavailable");
}

/// Pushes a blob unless the repository already has it (as docker and skopeo do), sometimes
/// by mounting it from another repository.
async fn ensure_blob(
    c: &Client,
    tally: &StressTally,
    rng: &mut Rng,
    repo: &str,
    data: &[u8],
    trust_head: bool,
) {
    let digest = sha256(data);
    if trust_head {
        let head = call_retrying(c, tally, || {
            c.request(Method::HEAD, &format!("/v2/{repo}/blobs/{digest}"))
        })
        .await;
        if head.status == StatusCode::OK {
            return;
        }
    }
    if rng.below(4) == 0 {
        let from = STRESS_REPOS[rng.below(3) as usize];
        let mount = call_retrying(c, tally, || {
            c.request(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
                .query(&[("mount", digest.as_str()), ("from", from)])
        })
        .await;
        if mount.status == StatusCode::CREATED {
            tally.mounts.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Not mountable: the answer opened an upload session, which the blob goes into.
        mount.expect(202, None);
        let location = mount.header("location").unwrap().to_owned();
        let put = call_retrying(c, tally, || {
            c.request(Method::PUT, &location)
                .query(&[("digest", digest.as_str())])
                .header("content-type", "application/octet-stream")
                .body(data.to_vec())
        })
        .await;
        put.expect(201, None);
        return;
    }
    let put = call_retrying(c, tally, || {
        c.request(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .query(&[("digest", digest.as_str())])
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
    })
    .await;
    put.expect(201, None);
}

/// Interleaved pushes (of a small pool of configs and layers, so that the same layers are
/// pushed again and again), manifest and tag deletes from `workers` clients, for `iterations`
/// each. Returns every manifest pushed, by repository.
pub async fn stress(
    clients: Vec<Client>,
    iterations: u64,
    seed: u64,
    tally: Arc<StressTally>,
) -> BTreeMap<String, BTreeSet<String>> {
    let layers: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..12)
            .map(|i| random_bytes(2000 + i * 1500, seed.wrapping_add(i as u64)))
            .collect(),
    );
    let configs: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..8)
            .map(|i| {
                format!(
                    r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"n":{i},"seed":{seed}}}"#
                )
                .into_bytes()
            })
            .collect(),
    );
    let pushed: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>> = Arc::default();
    let workers = clients.into_iter().enumerate().map(|(w, c)| {
        let (layers, configs, pushed, tally) = (
            Arc::clone(&layers),
            Arc::clone(&configs),
            Arc::clone(&pushed),
            Arc::clone(&tally),
        );
        tokio::spawn(async move {
            let mut rng = Rng(seed.wrapping_mul(31).wrapping_add(w as u64 * 7919) | 1);
            for _ in 0..iterations {
                let repo = STRESS_REPOS[rng.below(3) as usize];
                let tag = format!("t{}", rng.below(4));
                match rng.below(10) {
                    0..=5 => {
                        let config = &configs[rng.below(8) as usize];
                        let a = &layers[rng.below(12) as usize];
                        let b = &layers[rng.below(12) as usize];
                        let manifest = image_manifest(
                            &sha256(config),
                            config.len(),
                            &[(&sha256(a), a.len()), (&sha256(b), b.len())],
                            None,
                        );
                        let mut trust_head = true;
                        loop {
                            for blob in [config, a, b] {
                                ensure_blob(&c, &tally, &mut rng, repo, blob, trust_head).await;
                            }
                            let put = call_retrying(&c, &tally, || {
                                c.request(Method::PUT, &format!("/v2/{repo}/manifests/{tag}"))
                                    .header("content-type", OCI_MANIFEST)
                                    .body(manifest.clone())
                            })
                            .await;
                            if put.status == StatusCode::CREATED {
                                break;
                            }
                            put.expect(400, Some("MANIFEST_BLOB_UNKNOWN"));
                            tally.refused_then_repushed.fetch_add(1, Ordering::Relaxed);
                            trust_head = false;
                        }
                        tally.pushes.fetch_add(1, Ordering::Relaxed);
                        pushed
                            .lock()
                            .unwrap()
                            .entry(repo.to_owned())
                            .or_default()
                            .insert(sha256(&manifest));
                    }
                    6..=8 => {
                        let known: Vec<String> = pushed
                            .lock()
                            .unwrap()
                            .get(repo)
                            .map(|s| s.iter().cloned().collect())
                            .unwrap_or_default();
                        if known.is_empty() {
                            continue;
                        }
                        let digest = &known[rng.below(known.len() as u64) as usize];
                        let a = call_retrying(&c, &tally, || {
                            c.request(Method::DELETE, &format!("/v2/{repo}/manifests/{digest}"))
                        })
                        .await;
                        assert!(
                            a.status == StatusCode::ACCEPTED || a.status == StatusCode::NOT_FOUND,
                            "{a:?}"
                        );
                        tally.deletes.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        let a = call_retrying(&c, &tally, || {
                            c.request(Method::DELETE, &format!("/v2/{repo}/manifests/{tag}"))
                        })
                        .await;
                        assert!(
                            a.status == StatusCode::ACCEPTED || a.status == StatusCode::NOT_FOUND,
                            "{a:?}"
                        );
                        tally.deletes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker.expect("a stress worker panicked");
    }
    Arc::try_unwrap(pushed)
        .map(|m| m.into_inner().unwrap())
        .unwrap_or_else(|shared| shared.lock().unwrap().clone())
}

/// Every manifest still in the registry (of those pushed) pulls whole: each blob it
/// references answers with exactly its bytes. Returns the blobs they reference.
pub async fn every_manifest_is_whole(
    c: &Client,
    pushed: &BTreeMap<String, BTreeSet<String>>,
) -> (usize, BTreeSet<String>) {
    let mut manifests = 0;
    let mut referenced = BTreeSet::new();
    for (repo, digests) in pushed {
        for digest in digests {
            let got = c.get(&format!("/v2/{repo}/manifests/{digest}")).await;
            if got.status == StatusCode::NOT_FOUND {
                continue;
            }
            assert_eq!(got.status, StatusCode::OK, "{repo}@{digest}");
            manifests += 1;
            let json = got.json();
            let blobs = std::iter::once(&json["config"])
                .chain(json["layers"].as_array().unwrap().iter())
                .map(|d| d["digest"].as_str().unwrap().to_owned());
            for blob in blobs {
                let pulled = c.get_following(&format!("/v2/{repo}/blobs/{blob}")).await;
                assert_eq!(
                    pulled.status,
                    StatusCode::OK,
                    "{repo}@{digest} references {blob}, which is gone"
                );
                assert_eq!(sha256(&pulled.body), blob, "{repo}: {blob} pulls intact");
                referenced.insert(blob);
            }
        }
    }
    (manifests, referenced)
}
