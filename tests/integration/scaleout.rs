//! Scale-out, proven: three replicas behind HAProxy in plain round-robin (see `cluster.rs`).
//! Every client users have pushes and pulls through the load balancer; replicas are killed
//! mid-upload, the database restarts, S3 freezes, and replicas restart one by one, while
//! uploads run; nothing committed is lost and Berth never answers 500.
//!
//! These tests bring their own Postgres and Garage, so they run once, with the `postgres-s3`
//! backend; on the others they are reported as ignored. `scripts/soak.sh` runs the fault run for longer (`BERTH_SOAK_SECONDS`,
//! `BERTH_SOAK_UPLOADS`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;

use crate::cluster::Cluster;
use crate::util::*;

fn every_client_pushes_and_pulls_through_the_load_balancer() {
    let cluster = Cluster::start(3, &[]);
    let reg = cluster.addr().to_string();
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let layout = Layout::new(work);
    let seed = unique_seed();
    let amd = layout.image(work, "amd64", seed);
    let arm = layout.image(work, "arm64", seed + 1);
    let (index, index_hex) = layout.multi_arch(&[
        (&amd, r#"{"architecture":"amd64","os":"linux"}"#),
        (&arm, r#"{"architecture":"arm64","os":"linux"}"#),
    ]);
    layout.index(&[
        (OCI_MANIFEST, &amd.manifest, amd.size, "v1"),
        (OCI_INDEX, &index_hex, index.len(), "multi"),
    ]);
    let pushed = blobs_of(&layout.dir);

    // skopeo: a single-arch OCI image, the same as Docker v2s2, and a multi-arch index.
    ok(skopeo()
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .arg(layout.reference("v1"))
        .arg(format!("docker://{reg}/lb/skopeo:v1")));
    ok(skopeo()
        .args(["copy", "-q", "--format", "v2s2", "--dest-tls-verify=false"])
        .arg(layout.reference("v1"))
        .arg(format!("docker://{reg}/lb/skopeo:v2s2")));
    ok(skopeo()
        .args(["copy", "-q", "--all", "--dest-tls-verify=false"])
        .arg(layout.reference("multi"))
        .arg(format!("docker://{reg}/lb/skopeo:multi")));
    let out = work.join("skopeo-pulled");
    ok(skopeo()
        .args(["copy", "-q", "--all", "--src-tls-verify=false"])
        .arg(format!("docker://{reg}/lb/skopeo:multi"))
        .arg(format!("oci:{}:multi", out.display())));
    let pulled = blobs_of(&out);
    for (name, bytes) in &pulled {
        assert_eq!(
            pushed.get(name),
            Some(bytes),
            "skopeo: blob {name} comes back as pushed"
        );
    }
    let v2s2 = ok(skopeo()
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reg}/lb/skopeo:v2s2")));
    assert!(v2s2.contains(DOCKER_MANIFEST));

    // podman: pull, push, and a manifest list pushed with --all.
    let store = work.join("podman");
    let podman = || podman(&store, work);
    podman_copy(
        podman,
        &format!("{reg}/lb/skopeo:v1"),
        &format!("{reg}/lb/podman:v1"),
    );
    ok(podman().args(["manifest", "create", "localhost/lb-multi:v1"]));
    ok(podman()
        .args(["manifest", "add", "localhost/lb-multi:v1"])
        .arg(format!("containers-storage:{reg}/lb/skopeo:v1")));
    podman_push_list(
        podman,
        "localhost/lb-multi:v1",
        &format!("docker://{reg}/lb/podman:multi"),
    );
    let digest = ok(podman()
        .args(["image", "inspect", "--format", "{{.Digest}}"])
        .arg(format!("{reg}/lb/skopeo:v1")));
    assert_eq!(
        digest.trim(),
        format!("sha256:{}", amd.manifest),
        "podman pulled what was pushed"
    );

    // buildah: an image built from scratch, pushed.
    require("buildah");
    let buildah = || {
        let mut c = Command::new("buildah");
        c.arg("--root").arg(work.join("buildah/root"));
        c.arg("--runroot").arg(work.join("buildah/run"));
        c.args(["--storage-driver", "vfs"]);
        c.env("TMPDIR", work);
        c
    };
    let container = ok(buildah().args(["from", "scratch"])).trim().to_owned();
    std::fs::write(work.join("hello.txt"), random_bytes(10_000, seed + 2)).unwrap();
    ok(buildah()
        .args(["copy", &container])
        .arg(work.join("hello.txt"))
        .arg("/hello.txt"));
    ok(buildah().args(["commit", "-q", &container, "localhost/lb-buildah:v1"]));
    ok(buildah()
        .args([
            "push",
            "-q",
            "--tls-verify=false",
            "localhost/lb-buildah:v1",
        ])
        .arg(format!("docker://{reg}/lb/buildah:v1")));
    let built = ok(skopeo()
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reg}/lb/buildah:v1")));
    assert!(built.contains("layers"), "{built}");

    // The Docker engine and its containerd.
    docker_round_trip(&reg, work);
    containerd_round_trip(&reg);
    // oras-py and Helm.
    oras_round_trip(&cluster, work);
    helm_round_trip(&reg, work);
}

fn docker(config: &Path) -> Command {
    require("docker");
    let mut c = Command::new("docker");
    c.env("DOCKER_CONFIG", config);
    c
}

/// `docker push`, `pull` and `run` of a busybox image made from a tarball.
fn docker_round_trip(reg: &str, work: &Path) {
    let config = work.join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    let root = work.join("busybox-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed (.ci/run installs it)");
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let tar = work.join("busybox.tar");
    tar_dir(&root, &tar);
    let name = format!("{reg}/lb/docker:v{}", unique_seed() % 1_000_000);
    ok(docker(&config)
        .args(["import", "--change", "ENTRYPOINT [\"/bin/busybox\"]"])
        .arg(&tar)
        .arg(&name));
    ok(docker(&config).args(["push", &name]));
    ok(docker(&config).args(["rmi", &name]));
    ok(docker(&config).args(["pull", &name]));
    let said = ok(docker(&config).args([
        "run",
        "--rm",
        "--network",
        "none",
        &name,
        "echo",
        "hello from berth",
    ]));
    assert_eq!(said.trim(), "hello from berth");
    ok(docker(&config).args(["rmi", &name]));
}

/// `ctr` of the engine's containerd: pull, tag, push.
fn containerd_round_trip(reg: &str) {
    require("ctr");
    let socket = [
        "/run/docker/containerd/containerd.sock",
        "/run/containerd/containerd.sock",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("dockerd runs a containerd");
    let ctr = || {
        let mut c = Command::new("ctr");
        c.args(["--address", socket, "-n", "berth-test"]);
        c
    };
    let source = format!("{reg}/lb/skopeo:v1");
    let copy = format!("{reg}/lb/ctr:v{}", unique_seed() % 1_000_000);
    ok(ctr().args(["images", "pull", "--plain-http", &source]));
    ok(ctr().args(["images", "tag", &source, &copy]));
    ok(ctr().args(["images", "push", "--plain-http", &copy]));
    let listed = ok(ctr().args(["images", "ls", "-q"]));
    assert!(listed.contains(&copy));
    ok(ctr().args(["images", "pull", "--plain-http", &copy]));
    let _ = ctr().args(["images", "rm", &source, &copy]).output();
}

const ORAS: &str = r#"
import sys, os, json, urllib.request, oras.client, oras.oci
host, work = sys.argv[1:3]
client = oras.client.OrasClient(hostname=host, insecure=True)
os.chdir(work)
with open("artifact.bin", "wb") as f:
    f.write(os.urandom(400000))
client.push(files=["artifact.bin"], target=f"{host}/lb/oras:v1")
client.push(files=["artifact.bin"], target=f"{host}/lb/oras:chunked", do_chunked=True, chunk_size=150000)
for tag in ["v1", "chunked"]:
    for p in client.pull(target=f"{host}/lb/oras:{tag}", outdir=os.path.join(work, "out-" + tag)):
        assert open(p, "rb").read() == open("artifact.bin", "rb").read(), "bytes differ"
# An artifact about v1, found through the referrers API.
req = urllib.request.Request(f"http://{host}/v2/lb/oras/manifests/v1", method="HEAD",
                             headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
head = urllib.request.urlopen(req).headers
digest = head["Docker-Content-Digest"]
subject = oras.oci.Subject(mediaType=head["Content-Type"], digest=digest, size=int(head["Content-Length"]))
with open("signature.txt", "w") as f:
    f.write("signed")
client.push(files=["signature.txt"], target=f"{host}/lb/oras:sig", subject=subject)
listing = json.load(urllib.request.urlopen(f"http://{host}/v2/lb/oras/referrers/{digest}"))
assert len(listing["manifests"]) == 1, listing
print("ok")
"#;

fn oras_round_trip(cluster: &Cluster, work: &Path) {
    let script = work.join("oras_lb.py");
    std::fs::write(&script, ORAS).unwrap();
    let out = ok(Command::new("python3")
        .arg(&script)
        .arg(cluster.addr().to_string())
        .arg(work));
    assert!(out.contains("ok"), "{out}");
}

const HELM: &str = r#"
import sys, os, helm_python
host, work = sys.argv[1:3]
chart = os.path.join(work, "chart")
os.makedirs(os.path.join(chart, "templates"), exist_ok=True)
open(os.path.join(chart, "Chart.yaml"), "w").write("apiVersion: v2\nname: lbchart\nversion: 0.1.0\n")
open(os.path.join(chart, "values.yaml"), "w").write("replicas: 2\n")
open(os.path.join(chart, "templates", "cm.yaml"), "w").write(
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  r: \"{{ .Values.replicas }}\"\n")
package = helm_python.package(chart, destination=work)
helm_python.push(package, f"oci://{host}/lb/charts", plain_http=True)
out = os.path.join(work, "pulled")
os.makedirs(out, exist_ok=True)
helm_python.pull(f"oci://{host}/lb/charts/lbchart", version="0.1.0", destination=out, plain_http=True)
pulled = os.path.join(out, os.path.basename(package))
assert open(pulled, "rb").read() == open(package, "rb").read(), "chart differs"
print("ok")
"#;

fn helm_round_trip(reg: &str, work: &Path) {
    let script = work.join("helm_lb.py");
    std::fs::write(&script, HELM).unwrap();
    let out = ok(Command::new("python3").arg(&script).arg(reg).arg(work));
    assert!(out.contains("ok"), "{out}");
}

/// What clients saw during a run.
#[derive(Default, Debug)]
struct Seen {
    /// Answers by status.
    statuses: BTreeMap<u16, u64>,
    /// 5xx answers that came from Berth (an OCI error body), by status.
    from_berth: BTreeMap<u16, u64>,
    /// 503s from Berth without `Retry-After`.
    without_retry_after: u64,
    /// Transport errors (connection reset by a killed replica).
    broken: u64,
    resumed: u64,
}

impl Seen {
    fn note(&mut self, a: &Answer) {
        *self.statuses.entry(a.status.as_u16()).or_default() += 1;
        let from_berth = a.status.is_server_error()
            && serde_json::from_slice::<serde_json::Value>(&a.body)
                .is_ok_and(|v| v["errors"].is_array());
        if from_berth {
            *self.from_berth.entry(a.status.as_u16()).or_default() += 1;
            if a.status.as_u16() == 503 && a.header("retry-after").is_none() {
                self.without_retry_after += 1;
            }
        }
    }
}

/// A client that resumes as the spec says: on any failure, ask the upload where it stands and
/// go on from there (a new upload if it is gone); the blob's digest at the end.
async fn resilient_upload(
    c: &Client,
    repo: &str,
    data: Vec<u8>,
    chunk: usize,
    seen: Arc<Mutex<Seen>>,
) -> String {
    let digest = sha256(&data);
    let send = async |request: reqwest::RequestBuilder| -> Option<Answer> {
        match request.timeout(Duration::from_secs(60)).send().await {
            Ok(r) => {
                let status = r.status();
                let headers = r.headers().clone();
                let body = r.bytes().await.unwrap_or_default();
                let a = Answer {
                    status,
                    headers,
                    body,
                };
                seen.lock().unwrap().note(&a);
                Some(a)
            }
            Err(_) => {
                seen.lock().unwrap().broken += 1;
                None
            }
        }
    };
    let pause = || tokio::time::sleep(Duration::from_millis(200));
    'upload: loop {
        let Some(started) =
            send(c.request(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))).await
        else {
            pause().await;
            continue;
        };
        if started.status != 202 {
            pause().await;
            continue;
        }
        let location = started.header("location").unwrap().to_owned();
        let mut at = 0usize;
        loop {
            if at == data.len() {
                match send(
                    c.request(Method::PUT, &location)
                        .query(&[("digest", &digest)]),
                )
                .await
                {
                    Some(a) if a.status == 201 => return digest,
                    Some(a) if a.status == 404 => {
                        // Completed by the attempt that broke, or gone.
                        let head =
                            send(c.request(Method::HEAD, &format!("/v2/{repo}/blobs/{digest}")))
                                .await;
                        if head.is_some_and(|h| h.status == 200) {
                            return digest;
                        }
                        continue 'upload;
                    }
                    _ => {}
                }
            } else {
                let end = (at + chunk).min(data.len());
                let patched = send(
                    c.request(Method::PATCH, &location)
                        .header("content-range", format!("{at}-{}", end - 1))
                        .body(data[at..end].to_vec()),
                )
                .await;
                if let Some(a) = &patched
                    && a.status == 202
                {
                    at = end;
                    continue;
                }
            }
            // Something failed: where does the upload stand?
            seen.lock().unwrap().resumed += 1;
            pause().await;
            match send(c.request(Method::GET, &location)).await {
                Some(a) if a.status == 204 => {
                    let range = a.header("range").unwrap_or("0-0");
                    let last: usize = range.trim_start_matches("0-").parse().unwrap_or(0);
                    at = if last == 0 && at == 0 { 0 } else { last + 1 };
                }
                Some(a) if a.status == 404 => continue 'upload,
                _ => {}
            }
        }
    }
}

/// Verifies every blob downloads with its digest, through the load balancer.
async fn all_intact(c: &Client, blobs: &[(String, String)]) {
    for (repo, digest) in blobs {
        let got = c.get_following(&format!("/v2/{repo}/blobs/{digest}")).await;
        assert_eq!(got.status, 200, "{repo}@{digest}");
        assert_eq!(
            &sha256(&got.body),
            digest,
            "{repo}@{digest} comes back intact"
        );
    }
}

/// `/readyz` of one replica, asked directly: status and text.
async fn readiness_of(replica: std::net::SocketAddr) -> (u16, String) {
    let answer = reqwest::Client::new()
        .get(format!("http://{replica}/readyz"))
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    match answer {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

fn soak_setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn uploads_survive_killed_replicas_a_database_restart_and_a_frozen_s3() {
    let uploads = soak_setting("BERTH_SOAK_UPLOADS", 20) as usize;
    let chaos_secs = soak_setting("BERTH_SOAK_SECONDS", 20);
    let cluster = Arc::new(Mutex::new(Cluster::start(
        3,
        &[
            ("BERTH_S3_READ_TIMEOUT", "3s"),
            ("BERTH_DB_ACQUIRE_TIMEOUT", "2s"),
        ],
    )));
    let c = cluster.lock().unwrap().client();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    // Uploads in 1 MiB chunks, round after round until the faults are over.
    let workers: Vec<_> = (0..uploads)
        .map(|i| {
            let (c, seen, done) = (c.clone(), Arc::clone(&seen), Arc::clone(&done));
            tokio::spawn(async move {
                let mut committed = Vec::new();
                let mut round = 0u64;
                loop {
                    let repo = format!("soak/w{i}");
                    let data = random_bytes(6 << 20, unique_seed() ^ (i as u64) << 20 ^ round);
                    let digest =
                        resilient_upload(&c, &repo, data, 1 << 20, Arc::clone(&seen)).await;
                    committed.push((repo, digest));
                    round += 1;
                    if done.load(Ordering::SeqCst) {
                        return committed;
                    }
                }
            })
        })
        .collect();

    // Kill a random replica every 2-5 s and restart it.
    let mut kills = 0;
    while started.elapsed() < Duration::from_secs(chaos_secs) {
        tokio::time::sleep(Duration::from_millis(2000 + unique_seed() % 3000)).await;
        let victim = (unique_seed() % 3) as usize;
        let cluster = Arc::clone(&cluster);
        tokio::task::spawn_blocking(move || cluster.lock().unwrap().kill_and_restart(victim))
            .await
            .unwrap();
        kills += 1;
    }

    // Restart Postgres once: readiness says so while it is down.
    {
        let cluster = Arc::clone(&cluster);
        tokio::task::spawn_blocking(move || cluster.lock().unwrap().postgres.stop())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let replica = cluster.lock().unwrap().addresses[0];
    let readiness = readiness_of(replica).await;
    assert_eq!(
        readiness.0, 503,
        "not ready while the database is down: {}",
        readiness.1
    );
    assert!(readiness.1.contains("metadata database"), "{}", readiness.1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    {
        let cluster = Arc::clone(&cluster);
        tokio::task::spawn_blocking(move || cluster.lock().unwrap().postgres.start_again())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Freeze S3 for 10 s.
    cluster.lock().unwrap().garage.freeze();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = Instant::now();
    let replica = cluster.lock().unwrap().addresses[1];
    let readiness = readiness_of(replica).await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "readiness answers promptly"
    );
    assert_eq!(
        readiness.0, 503,
        "not ready while S3 hangs: {}",
        readiness.1
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    cluster.lock().unwrap().garage.thaw();

    done.store(true, Ordering::SeqCst);
    let mut committed = Vec::new();
    for w in workers {
        committed.extend(
            tokio::time::timeout(Duration::from_secs(180), w)
                .await
                .expect("uploads finish")
                .unwrap(),
        );
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    eprintln!(
        "soak: {} uploads committed by {uploads} clients in {:.0} s; {kills} replicas killed; \
         {} resumptions; answers by status {:?} (from Berth's own 5xx: {:?}; the rest are the \
         load balancer's); {} connections broken by kills",
        committed.len(),
        started.elapsed().as_secs_f64(),
        seen.resumed,
        seen.statuses,
        seen.from_berth,
        seen.broken
    );
    let failures = cluster.lock().unwrap().deployment.log_lines("status=500");
    assert_eq!(
        seen.from_berth.get(&500).copied().unwrap_or(0),
        0,
        "Berth never answered 500:\n{}",
        failures.join("\n")
    );
    assert_eq!(seen.without_retry_after, 0, "every 503 says when to retry");
    all_intact(&c, &committed).await;
    eprintln!(
        "soak: lost 0 of {} committed uploads (each read back with its digest)",
        committed.len()
    );
    // No metadata row points at missing bytes.
    let scrubbed = cluster
        .lock()
        .unwrap()
        .deployment
        .command(&["scrub"])
        .output()
        .unwrap();
    assert!(
        scrubbed.status.success(),
        "{}{}",
        String::from_utf8_lossy(&scrubbed.stdout),
        String::from_utf8_lossy(&scrubbed.stderr)
    );
}

async fn a_rolling_restart_fails_no_request() {
    let cluster = Arc::new(Mutex::new(Cluster::start(3, &[])));
    let c = cluster.lock().unwrap().client();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let done = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let (c, seen, done) = (c.clone(), Arc::clone(&seen), Arc::clone(&done));
            tokio::spawn(async move {
                let mut committed = Vec::new();
                let mut round = 0u64;
                while !done.load(Ordering::SeqCst) {
                    let repo = format!("rolling/w{i}");
                    let data = random_bytes(3 << 20, unique_seed() ^ (i as u64) << 20 ^ round);
                    committed.push((
                        repo.clone(),
                        resilient_upload(&c, &repo, data, 1 << 20, Arc::clone(&seen)).await,
                    ));
                    round += 1;
                }
                committed
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..3 {
        let cluster = Arc::clone(&cluster);
        let took = tokio::task::spawn_blocking(move || cluster.lock().unwrap().stop_and_restart(i))
            .await
            .unwrap();
        eprintln!("replica {i} stopped in {took:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    done.store(true, Ordering::SeqCst);
    let mut committed = Vec::new();
    for w in workers {
        committed.extend(w.await.unwrap());
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    eprintln!(
        "rolling restart: {} uploads, statuses {:?}, broken {}",
        committed.len(),
        seen.statuses,
        seen.broken
    );
    let failed: u64 = seen
        .statuses
        .iter()
        .filter(|(s, _)| **s >= 400)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(failed + seen.broken, 0, "no request failed: {:?}", seen);
    all_intact(&c, &committed).await;
}

/// Garbage collection online in the production shape: three replicas behind the load balancer
/// each run the worker (grace period 0, so every unreferenced link is due at once) and
/// `berth gc` runs beside them, while clients push, delete and push the same layers again
/// through the load balancer. Every manifest left pulls whole; nothing unreferenced is left.
async fn gc_runs_online_on_every_replica_while_clients_push_and_delete() {
    use crate::gc::gc;
    use crate::stress::{StressTally, every_manifest_is_whole, stress};
    let cluster = Cluster::start(
        3,
        &[
            ("BERTH_GC_GRACE_PERIOD", "0s"),
            ("BERTH_GC_INTERVAL", "100ms"),
        ],
    );
    let deployment = Arc::clone(&cluster.deployment);
    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let (deployment, stop) = (Arc::clone(&deployment), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut passes = 0;
            while !stop.load(Ordering::Relaxed) {
                let run = gc(&deployment, &[], &[]);
                assert!(run.ok, "a collection pass failed: {}", run.out);
                passes += 1;
            }
            passes
        })
    };
    let tally = Arc::new(StressTally::default());
    let clients = (0..8).map(|_| cluster.client()).collect();
    let iterations = soak_setting("BERTH_GC_STRESS_ITERATIONS", 150);
    let pushed = stress(clients, iterations, unique_seed(), Arc::clone(&tally)).await;
    stop.store(true, Ordering::Relaxed);
    let passes = collector.join().expect("the collector ran");
    let c = cluster.client();
    let last = gc(&deployment, &[], &[]);
    assert!(last.ok, "{}", last.out);
    let (manifests, referenced) = every_manifest_is_whole(&c, &pushed).await;
    eprintln!(
        "gc in the cluster: {} pushes, {} deletes, {} mounts, {} manifests refused and pushed \
         again, {} answers 503, {passes} `berth gc` passes beside 3 workers; {manifests} \
         manifests left, all whole, referencing {} blobs",
        tally.pushes.load(Ordering::Relaxed),
        tally.deletes.load(Ordering::Relaxed),
        tally.mounts.load(Ordering::Relaxed),
        tally.refused_then_repushed.load(Ordering::Relaxed),
        tally.unavailable.load(Ordering::Relaxed),
        referenced.len()
    );
    let s3 = crate::cluster::s3_client_at(&cluster.garage.endpoint()).await;
    let stored = async || {
        s3.list_objects_v2()
            .bucket(s3_bucket())
            .prefix("cluster/")
            .send()
            .await
            .unwrap()
            .contents()
            .len()
    };
    // The replicas' workers may still be removing the bytes of rows they deleted last.
    eventually(
        "every stored object to be a blob a manifest references",
        Duration::from_secs(20),
        async || stored().await == referenced.len(),
    )
    .await;
    let scrub = deployment.command(&["scrub"]).output().unwrap();
    let out = String::from_utf8_lossy(&scrub.stdout);
    assert!(scrub.status.success(), "{out}");
}

crate::harness::trials! {
    every_client_pushes_and_pulls_through_the_load_balancer.needs(PostgresS3Run).own_services();
    uploads_survive_killed_replicas_a_database_restart_and_a_frozen_s3.multi_thread(4).needs(PostgresS3Run).own_services();
    a_rolling_restart_fails_no_request.multi_thread(4).needs(PostgresS3Run).own_services();
    gc_runs_online_on_every_replica_while_clients_push_and_delete.multi_thread(4).needs(PostgresS3Run).own_services();
}
