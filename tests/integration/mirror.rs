//! Berth as a pull-through cache of real registries: an upstream Berth with Basic
//! credentials read through by skopeo, a mirror of the mirror (chained caches), what is kept
//! served while the upstream is down (stale tags marked), the 503 that names the upstream for
//! what is not kept, pushes into mirrored names refused, and one upstream fetch per blob for
//! concurrent cold pulls on two replicas.

use std::path::Path;

use reqwest::Method;

use crate::auth_fixtures::{AuthFiles, USERS};
use crate::observability::observed_server;
use crate::upstream::{TokenOrigin, push_image};
use crate::util::*;

/// A process of a fresh deployment reading through the `[[upstream]]` entries in `upstreams`
/// (TOML), written into `dir`.
fn mirror(dir: &Path, upstreams: &str, extra: &[(&str, &str)]) -> Server {
    let config = dir.join(format!("mirror-{}.toml", unique_seed()));
    std::fs::write(&config, upstreams).unwrap();
    let config = config.display().to_string();
    let mut settings = vec![
        ("BERTH_CONFIG", config.as_str()),
        ("BERTH_REDIRECT", "false"),
    ];
    settings.extend_from_slice(extra);
    Server::start_with(&settings)
}

const MANIFEST_TYPES: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

async fn manifest(c: &Client, path: &str) -> Answer {
    c.send(
        c.request(Method::GET, path)
            .header("accept", MANIFEST_TYPES),
    )
    .await
}

/// Copies `source` with skopeo into a fresh layout; its blobs by name.
fn pulled(source: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    let into = tempfile::tempdir().unwrap();
    ok(skopeo()
        .args(["copy", "-q", "--src-tls-verify=false", source])
        .arg(format!("oci:{}:pulled", into.path().display())));
    blobs_of(into.path())
}

/// GETs `path`, following no redirect and hashing the body as it streams: the status, the
/// body's digest and its length.
async fn streamed_sha256(c: &Client, path: &str) -> (u16, String, u64) {
    use sha2::Digest as _;
    let mut answer = c.request(Method::GET, path).send().await.unwrap();
    let status = answer.status().as_u16();
    let mut hasher = sha2::Sha256::new();
    let mut bytes = 0;
    while let Some(chunk) = answer.chunk().await.unwrap() {
        bytes += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (
        status,
        format!("sha256:{}", hex::encode(hasher.finalize())),
        bytes,
    )
}

/// `skopeo list-tags` of `repository` (a `docker://` reference), sorted.
fn list_tags(repository: &str) -> Vec<String> {
    let listed = ok(skopeo().args(["list-tags", "--tls-verify=false", repository]));
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let mut tags: Vec<String> = listed["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    tags.sort();
    tags
}

async fn a_mirror_reads_through_with_credentials_and_serves_what_it_kept_when_the_upstream_is_down()
{
    let files = AuthFiles::new();
    let auth = files.basic_settings();
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut origin = Server::start_with(&auth);
    let (work, manifest_digest) =
        push_image(&format!("docker://{}/alice/app:v1", origin.addr), None);
    let pushed = blobs_of(&work.path().join("layout"));
    // A second tag upstream, never pulled through the mirror.
    let creds = format!("alice:{}", USERS[0].1);
    ok(skopeo()
        .args([
            "copy",
            "-q",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .args(["--src-creds", &creds, "--dest-creds", &creds])
        .arg(format!("docker://{}/alice/app:v1", origin.addr))
        .arg(format!("docker://{}/alice/app:v2", origin.addr)));
    let dir = tempfile::tempdir().unwrap();
    let near_admin = format!("127.0.0.1:{}", free_port());
    let password = dir.path().join("origin-password");
    std::fs::write(&password, format!("{}\n", USERS[0].1)).unwrap();
    let near = mirror(
        dir.path(),
        &format!(
            r#"
[[upstream]]
name = "origin"
url = "http://{}"
prefix = "origin"
username = "alice"
password_file = "{}"
tag_ttl = "1s"
"#,
            origin.addr,
            password.display()
        ),
        &[("BERTH_ADMIN_LISTEN", &near_admin)],
    );
    // A cache of the cache: its every unprefixed name goes to the first mirror as it is.
    let far = mirror(
        dir.path(),
        &format!(
            "[[upstream]]\nname = \"near\"\nurl = \"http://{}\"\ndefault = true\n",
            near.addr
        ),
        &[],
    );

    // skopeo through the chain: the far mirror asks the near one, which asks the origin.
    let through_far = pulled(&format!("docker://{}/origin/alice/app:v1", far.addr));
    for (name, bytes) in &through_far {
        assert_eq!(
            pushed.get(name),
            Some(bytes),
            "blob {name} comes through both mirrors as pushed"
        );
    }
    assert!(through_far.len() >= 3, "{:?}", through_far.keys());
    let c = near.client();
    let by_tag = manifest(&c, "/v2/origin/alice/app/manifests/v1").await;
    by_tag.expect(200, None);
    assert_eq!(sha256(&by_tag.body), manifest_digest);
    assert!(by_tag.header("warning").is_none());

    // Tag lists are the upstream's, through both mirrors.
    for via in [&near, &far] {
        let tags = list_tags(&format!("docker://{}/origin/alice/app", via.addr));
        assert_eq!(tags, ["v1", "v2"], "tags through {}", via.addr);
    }

    // Mirrored names take no pushes; other names are the registry's own.
    let refused = c
        .call(Method::POST, "/v2/origin/alice/app/blobs/uploads/")
        .await;
    refused.expect(403, Some("DENIED"));
    assert!(
        String::from_utf8_lossy(&refused.body).contains("mirror of upstream origin"),
        "{:?}",
        refused.body
    );
    let own = c.push_image("own/app", "v1", unique_seed()).await;
    // A digest asked through a mirrored name does not reach the registry's own blobs when
    // the upstream does not have it.
    c.get(&format!(
        "/v2/origin/alice/app/blobs/{}",
        sha256(&own.layer)
    ))
    .await
    .expect(404, Some("BLOB_UNKNOWN"));

    // Past its TTL, an unmoved tag is revalidated with a HEAD and served as kept.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let revalidated = manifest(&c, "/v2/origin/alice/app/manifests/v1").await;
    revalidated.expect(200, None);
    assert_eq!(sha256(&revalidated.body), manifest_digest);

    // The tag moves upstream: after its TTL, the next pull sees the new manifest (and the old
    // one stays kept by digest).
    let (_moved_work, moved_digest) =
        push_image(&format!("docker://{}/alice/app:v1", origin.addr), None);
    assert_ne!(moved_digest, manifest_digest);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let moved = manifest(&c, "/v2/origin/alice/app/manifests/v1").await;
    moved.expect(200, None);
    assert_eq!(
        sha256(&moved.body),
        moved_digest,
        "the moved tag is seen after its TTL"
    );

    // The origin goes away: what was kept is still served, the tag (past its TTL) marked
    // stale, and what was never fetched is a 503 naming the upstream.
    origin.kill();
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let stale = manifest(&c, "/v2/origin/alice/app/manifests/v1").await;
    stale.expect(200, None);
    assert_eq!(sha256(&stale.body), moved_digest);
    let warning = stale.header("warning").unwrap_or_default();
    assert!(
        warning.starts_with("110 ") && warning.contains("upstream origin"),
        "{warning}"
    );
    manifest(
        &c,
        &format!("/v2/origin/alice/app/manifests/{manifest_digest}"),
    )
    .await
    .expect(200, None);
    let manifest_hex = manifest_digest.trim_start_matches("sha256:");
    for name in pushed.keys() {
        // The layout keeps the manifest among its blobs; the registry keeps it as a manifest.
        if through_far.contains_key(name) && name != manifest_hex {
            let blob = c
                .get_following(&format!("/v2/origin/alice/app/blobs/sha256:{name}"))
                .await;
            blob.expect(200, None);
            assert_eq!(Some(&blob.body.to_vec()), pushed.get(name));
        }
    }
    // Tags: what is kept, when the upstream cannot be asked.
    assert_eq!(
        list_tags(&format!("docker://{}/origin/alice/app", near.addr)),
        ["v1"]
    );
    let missing = manifest(&c, "/v2/origin/alice/app/manifests/v2").await;
    missing.expect(503, Some("UNAVAILABLE"));
    assert!(
        String::from_utf8_lossy(&missing.body).contains("upstream origin"),
        "{:?}",
        missing.body
    );
    // What the metrics say of all this.
    let exposition = scrape(&Client::new(&format!("http://{near_admin}"))).await;
    let counted = |name: &str, labels: &[(&str, &str)]| {
        metric_sum(
            &exposition,
            name,
            &[&[("upstream", "origin")], labels].concat(),
        )
    };
    let reads = "berth_mirror_manifest_reads_total";
    for outcome in ["fetched", "revalidated", "stale"] {
        assert!(counted(reads, &[("outcome", outcome)]) >= 1.0, "{outcome}");
    }
    let stored = counted("berth_mirror_blob_fetches_total", &[("outcome", "stored")]);
    assert!(stored >= 2.0, "{stored} blobs fetched");
    assert!(counted("berth_mirror_blob_hits_total", &[]) >= 2.0);
    assert!(counted("berth_mirror_fetched_bytes_total", &[]) > 0.0);
    for (method, status) in [("HEAD", "200"), ("GET", "200")] {
        let sent = counted(
            "berth_mirror_upstream_requests_total",
            &[("method", method), ("status", status)],
        );
        assert!(sent >= 1.0, "{method} {status} sent upstream");
    }
    assert!(
        counted(
            "berth_mirror_upstream_requests_total",
            &[("method", "GET"), ("status", "error")]
        ) >= 1.0,
        "requests the dead origin never answered"
    );
    // The far mirror still serves the chain's kept image from its own store.
    let again = pulled(&format!("docker://{}/origin/alice/app:v1", far.addr));
    assert_eq!(again, through_far);
}

async fn concurrent_cold_pulls_on_two_replicas_fetch_a_blob_from_the_upstream_once() {
    let (origin, origin_admin) = observed_server(&[("BERTH_REDIRECT", "false")]);
    let oc = origin.client();
    let layer = random_bytes(256 << 20, unique_seed());
    let digest = oc.push_blob("library/big", &layer).await;
    drop(layer);
    let dir = tempfile::tempdir().unwrap();
    // Docker's registry-mirrors shape: unprefixed names go to the default upstream.
    let a = mirror(
        dir.path(),
        &format!(
            "[[upstream]]\nname = \"origin\"\nurl = \"http://{}\"\ndefault = true\n",
            origin.addr
        ),
        &[],
    );
    let b = a.sibling();
    let balancer = crate::cluster::Haproxy::start(&[a.addr, b.addr]);
    let through_balancer = Client::new(&format!("http://127.0.0.1:{}", balancer.port));
    let before = scrape(&origin_admin).await;
    // 32 cold pulls of one 256 MiB blob at once, spread over both replicas by the balancer;
    // each client hashes what it reads as it streams.
    // Tasks of their own, so that the clients' hashing spreads over the runtime's threads.
    let pulls = (0..32).map(|_| {
        let c = through_balancer.clone();
        let path = format!("/v2/library/big/blobs/{digest}");
        tokio::spawn(async move { streamed_sha256(&c, &path).await })
    });
    let answers: Vec<_> = futures::future::join_all(pulls)
        .await
        .into_iter()
        .map(|joined| joined.expect("a pull's task"))
        .collect();
    for (status, read, bytes) in &answers {
        assert_eq!(*status, 200);
        assert_eq!(
            (read.as_str(), *bytes),
            (digest.as_str(), 256 << 20),
            "every pull gets the blob whole"
        );
    }
    let after = scrape(&origin_admin).await;
    let fetched = |exposition: &str| {
        metric_sum(
            exposition,
            "berth_http_requests_total",
            &[("operation", "get_blob"), ("status", "200")],
        )
    };
    assert_eq!(
        fetched(&after) - fetched(&before),
        1.0,
        "32 pulls on two replicas fetched the blob from the upstream once"
    );
    // The balancer spread them: both replicas answered pulls of the blob.
    for replica in [&a, &b] {
        let served = replica
            .log_text()
            .lines()
            .filter(|l| l.contains("operation=\"get_blob\"") && l.contains("status=200"))
            .count();
        assert!(
            served >= 1,
            "replica {} served {served} pulls",
            replica.addr
        );
    }
    // Kept now: more pulls do not reach the upstream.
    b.client()
        .get(&format!("/v2/library/big/blobs/{digest}"))
        .await
        .expect(200, None);
    assert_eq!(fetched(&scrape(&origin_admin).await), fetched(&after));

    // The client that starts a fetch leaves after its first bytes: the fetch goes on, and the
    // next pull (on the other replica) reads what it stored.
    let other = random_bytes(24 << 20, unique_seed());
    let other_digest = oc.push_blob("library/other", &other).await;
    let before = scrape(&origin_admin).await;
    let path = format!("/v2/library/other/blobs/{other_digest}");
    let mut leaving = a.client().request(Method::GET, &path).send().await.unwrap();
    assert_eq!(leaving.status(), 200);
    assert!(leaving.chunk().await.unwrap().is_some());
    drop(leaving);
    let whole = b.client().get(&path).await;
    whole.expect(200, None);
    assert_eq!(sha256(&whole.body), other_digest);
    assert_eq!(
        fetched(&scrape(&origin_admin).await) - fetched(&before),
        1.0,
        "the fetch the leaving client started was not abandoned and fetched again"
    );
}

/// A Berth serving TLS with a private CA in token mode as the upstream (Docker Hub's
/// challenge flow): the mirror trusts the CA from `ca_file`, gets tokens with the
/// credentials, and skopeo pulls the image through it whole.
async fn a_mirror_reads_through_a_tls_upstream_in_token_mode() {
    let origin = TokenOrigin::start();
    let pushed = blobs_of(&origin.work.path().join("layout"));
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, USERS[0].1).unwrap();
    let near = mirror(
        dir.path(),
        &format!(
            "[[upstream]]\nname = \"secure\"\nurl = \"https://{}\"\nprefix = \"secure\"\n\
             username = \"alice\"\npassword_file = \"{}\"\nca_file = \"{}\"\n",
            origin.server.addr,
            password.display(),
            origin.setup.ca().display()
        ),
        &[],
    );
    let through = pulled(&format!("docker://{}/secure/alice/app:v1", near.addr));
    assert!(through.len() >= 3, "{:?}", through.keys());
    for (name, bytes) in &through {
        assert_eq!(pushed.get(name), Some(bytes), "blob {name} as pushed");
    }
    assert!(through.contains_key(origin.manifest_digest.trim_start_matches("sha256:")));
}

/// CNCF Distribution (Debian's `docker-registry`) as the upstream, behind htpasswd: Basic
/// credentials from a file, manifests and blobs read through, and a blob `HEAD` answered from
/// the upstream's `HEAD` without fetching.
async fn a_mirror_reads_through_a_distribution_upstream_with_htpasswd() {
    require("docker-registry");
    let files = AuthFiles::new();
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("distribution.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog: {{level: error}}\n\
             storage: {{filesystem: {{rootdirectory: {}}}}}\n\
             auth: {{htpasswd: {{realm: distribution, path: {}}}}}\n\
             http: {{addr: {addr}}}\n",
            dir.path().join("storage").display(),
            files.path("htpasswd"),
        ),
    )
    .unwrap();
    let mut distribution = std::process::Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .env_remove("AWS_CA_BUNDLE")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("distribution.log")).unwrap())
        .spawn()
        .unwrap();
    eventually(
        "docker-registry listens",
        std::time::Duration::from_secs(10),
        async || std::net::TcpStream::connect(&addr).is_ok(),
    )
    .await;
    let (work, manifest_digest) = push_image(&format!("docker://{addr}/alice/app:v1"), None);
    let pushed = blobs_of(&work.path().join("layout"));
    let password = dir.path().join("password");
    std::fs::write(&password, USERS[0].1).unwrap();
    let near = mirror(
        dir.path(),
        &format!(
            "[[upstream]]\nname = \"distribution\"\nurl = \"http://{addr}\"\nprefix = \"dist\"\n\
             username = \"alice\"\npassword_file = \"{}\"\n",
            password.display()
        ),
        &[],
    );
    let c = near.client();
    let by_tag = manifest(&c, "/v2/dist/alice/app/manifests/v1").await;
    by_tag.expect(200, None);
    assert_eq!(sha256(&by_tag.body), manifest_digest);
    let parsed: serde_json::Value = serde_json::from_slice(&by_tag.body).unwrap();
    let layer = parsed["layers"][0]["digest"].as_str().unwrap().to_owned();
    let head = c
        .call(Method::HEAD, &format!("/v2/dist/alice/app/blobs/{layer}"))
        .await;
    head.expect(200, None);
    let hex = layer.trim_start_matches("sha256:");
    assert_eq!(
        head.header("content-length"),
        Some(pushed[hex].len().to_string().as_str())
    );
    assert!(
        near.deployment
            .log_lines("fetched a blob from upstream")
            .is_empty(),
        "a HEAD fetched nothing"
    );
    let through = pulled(&format!("docker://{}/dist/alice/app:v1", near.addr));
    for (name, bytes) in &through {
        assert_eq!(pushed.get(name), Some(bytes), "blob {name} as pushed");
    }
    let _ = distribution.kill();
    let _ = distribution.wait();
}

/// What the garbage upstream answers for a path: status, extra headers, the body, and how
/// many of its bytes are sent before the connection is closed.
struct Canned {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    sent: usize,
}

/// Reads a request's head from `socket`: its method and its path without the query; `None`
/// when the connection ends first.
async fn request_line(socket: &mut tokio::net::TcpStream) -> Option<(String, String)> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if socket.read(&mut byte).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or_default().to_owned();
    let path = words.next().unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default().to_owned();
    Some((method, path))
}

/// An upstream that answers each request with what `routes` holds for its path (404 for
/// others), one request per connection.
async fn canned_upstream(
    routes: std::collections::HashMap<String, Canned>,
) -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = std::sync::Arc::new(routes);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let routes = std::sync::Arc::clone(&routes);
            tokio::spawn(async move {
                let Some((method, path)) = request_line(&mut socket).await else {
                    return;
                };
                let path = path.as_str();
                let missing = Canned {
                    status: 404,
                    headers: Vec::new(),
                    body: Vec::new(),
                    sent: 0,
                };
                let canned = routes.get(path).unwrap_or(&missing);
                let mut answer = format!(
                    "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                    canned.status,
                    canned.body.len()
                );
                for (name, value) in &canned.headers {
                    answer.push_str(&format!("{name}: {value}\r\n"));
                }
                answer.push_str("\r\n");
                let _ = socket.write_all(answer.as_bytes()).await;
                if method != "HEAD" {
                    let _ = socket.write_all(&canned.body[..canned.sent]).await;
                }
                let _ = socket.shutdown().await;
            });
        }
    });
    addr
}

/// An upstream answering garbage — a blob whose bytes are not its digest, a body cut short,
/// a manifest that is not the one asked for — gets no client a whole wrong body, commits
/// nothing, and is answered as unavailable.
async fn an_upstream_answering_garbage_never_gets_a_wrong_blob_committed_or_served() {
    let right = random_bytes(3 << 20, unique_seed());
    let wrong_digest = sha256(&right);
    let short = random_bytes(3 << 20, unique_seed());
    let short_digest = sha256(&short);
    let manifest_digest = sha256(b"the manifest that was asked for");
    let blob = |body: Vec<u8>, sent: usize| Canned {
        status: 200,
        headers: vec![("Content-Type", "application/octet-stream".into())],
        body,
        sent,
    };
    let mut routes = std::collections::HashMap::new();
    routes.insert(
        "/v2/".to_owned(),
        Canned {
            status: 200,
            headers: Vec::new(),
            body: b"{}".to_vec(),
            sent: 2,
        },
    );
    // Other bytes of the same length under the digest.
    let other = random_bytes(right.len(), unique_seed());
    routes.insert(
        format!("/v2/library/bad/blobs/{wrong_digest}"),
        blob(other.clone(), other.len()),
    );
    // Half the bytes, then the connection closes.
    routes.insert(
        format!("/v2/library/bad/blobs/{short_digest}"),
        blob(short.clone(), short.len() / 2),
    );
    let not_it = b"{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a\",\"size\":2},\"layers\":[]}".to_vec();
    routes.insert(
        format!("/v2/library/bad/manifests/{manifest_digest}"),
        Canned {
            status: 200,
            headers: vec![(
                "Content-Type",
                "application/vnd.oci.image.manifest.v1+json".into(),
            )],
            sent: not_it.len(),
            body: not_it,
        },
    );
    let upstream = canned_upstream(routes).await;
    let dir = tempfile::tempdir().unwrap();
    let near = mirror(
        dir.path(),
        &format!("[[upstream]]\nname = \"garbage\"\nurl = \"http://{upstream}\"\ndefault = true\n"),
        &[],
    );
    let c = near.client();
    for digest in [&wrong_digest, &short_digest] {
        let path = format!("/v2/library/bad/blobs/{digest}");
        for attempt in 0..2 {
            let answer = c.request(Method::GET, &path).send().await.unwrap();
            if answer.status() == 200 {
                let body = answer.bytes().await;
                assert!(
                    body.is_err(),
                    "attempt {attempt}: a whole body was answered for {digest}"
                );
            } else {
                assert!(answer.status().is_server_error(), "{}", answer.status());
            }
        }
    }
    assert!(
        near.deployment
            .log_lines("fetched a blob from upstream")
            .is_empty(),
        "nothing was committed"
    );
    let answer = manifest(&c, &format!("/v2/library/bad/manifests/{manifest_digest}")).await;
    answer.expect(503, Some("UNAVAILABLE"));
    assert!(
        String::from_utf8_lossy(&answer.body).contains("upstream garbage"),
        "{:?}",
        answer.body
    );
}

/// A replica killed while it holds a fetch claim (its upstream GET unanswered) leaves a lease
/// that runs out; a pull waiting on another replica then takes the fetch over, and gets the
/// blob whole.
async fn a_fetch_whose_replica_died_is_taken_over_when_its_lease_runs_out() {
    let (origin, origin_admin) = observed_server(&[("BERTH_REDIRECT", "false")]);
    let layer = random_bytes(4 << 20, unique_seed());
    let digest = origin.client().push_blob("library/taken", &layer).await;
    let proxy = TcpProxy::start(origin.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = mirror(
        dir.path(),
        &format!(
            "[[upstream]]\nname = \"origin\"\nurl = \"http://127.0.0.1:{}\"\ndefault = true\n",
            proxy.port
        ),
        &[("BERTH_MIRROR_FETCH_LEASE", "2s")],
    );
    let b = a.sibling();
    let before = scrape(&origin_admin).await;
    let path = format!("/v2/library/taken/blobs/{digest}");
    // A claims the fetch; its GET reaches a proxy that never answers.
    proxy.stall();
    let stuck = {
        let request = a.client().request(Method::GET, &path);
        // Cut when A is killed: its outcome is no answer.
        tokio::spawn(async move { request.send().await.is_err() })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    a.kill();
    assert!(
        stuck.await.unwrap(),
        "A answered nothing: it died holding the claim"
    );
    proxy.enable();
    let started = std::time::Instant::now();
    let taken = b.client().get(&path).await;
    taken.expect(200, None);
    assert_eq!(sha256(&taken.body), digest, "the blob comes whole");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(800),
        "B waited for A's lease instead of fetching at once ({:?})",
        started.elapsed()
    );
    let fetched = metric_sum(
        &scrape(&origin_admin).await,
        "berth_http_requests_total",
        &[("operation", "get_blob"), ("status", "200")],
    ) - metric_sum(
        &before,
        "berth_http_requests_total",
        &[("operation", "get_blob"), ("status", "200")],
    );
    assert_eq!(fetched, 1.0, "only B's fetch reached the upstream");
}

/// podman with Docker Hub mirrored by Berth in `registries.conf` (what Docker's
/// `registry-mirrors` does too): `docker.io/library/NAME` is asked of the mirror as
/// `library/NAME`, which the default upstream serves. Docker Hub is not reachable here, so the
/// pull succeeds only through the mirror.
async fn podman_pulls_docker_hub_names_through_a_registries_conf_mirror() {
    let origin = Server::start();
    let (_work, manifest_digest) = push_image(
        &format!("docker://{}/library/mirrored:v1", origin.addr),
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    let near = mirror(
        dir.path(),
        &format!(
            "[[upstream]]\nname = \"dockerhub\"\nurl = \"http://{}\"\nprefix = \"dockerhub\"\ndefault = true\n",
            origin.addr
        ),
        &[],
    );
    let conf = dir.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n\
             [[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n",
            near.addr
        ),
    )
    .unwrap();
    let store = dir.path().join("store");
    let podman = || {
        let mut c = podman(&store, dir.path());
        c.env("CONTAINERS_REGISTRIES_CONF", &conf);
        c
    };
    ok(podman().args(["pull", "-q", "docker.io/library/mirrored:v1"]));
    let digest = ok(podman()
        .args(["image", "inspect", "--format", "{{.Digest}}"])
        .arg("docker.io/library/mirrored:v1"));
    assert_eq!(
        digest.trim(),
        manifest_digest,
        "podman got the image as pushed"
    );
    assert!(
        !near
            .deployment
            .log_lines("fetched a blob from upstream")
            .is_empty(),
        "the mirror fetched the blobs"
    );
    // With allow_push, a name of the upstream's takes pushes, and a tag the upstream lacks
    // is the registry's own.
    let open = mirror(
        dir.path(),
        &format!(
            "[[upstream]]\nname = \"open\"\nurl = \"http://{}\"\nprefix = \"open\"\nallow_push = true\ntag_ttl = \"0s\"\n",
            origin.addr
        ),
        &[],
    );
    let own = open
        .client()
        .push_image("open/library/mirrored", "ours", unique_seed())
        .await;
    let ours = manifest(&open.client(), "/v2/open/library/mirrored/manifests/ours").await;
    ours.expect(200, None);
    assert_eq!(sha256(&ours.body), own.digest);
    // The same upstream answers under its prefix too.
    manifest(
        &near.client(),
        &format!("/v2/dockerhub/library/mirrored/manifests/{manifest_digest}"),
    )
    .await
    .expect(200, None);
}

/// The socket of the containerd that the Docker engine runs.
const CONTAINERD_SOCKET: &str = "/var/run/docker/containerd/containerd.sock";

/// containerd with a `hosts.toml` mirror for docker.io: it asks the mirror with
/// `?ns=docker.io`, which routes the name to the upstream named `docker.io` (here one that
/// maps nothing else but its prefix: only the `ns` parameter can reach it), and the content
/// is kept under that upstream's prefix.
async fn containerd_pulls_through_a_hosts_toml_mirror_routed_by_ns() {
    require("ctr");
    assert!(
        Path::new(CONTAINERD_SOCKET).exists(),
        "the Docker engine's containerd answers at {CONTAINERD_SOCKET}"
    );
    let origin = Server::start();
    let (_work, manifest_digest) =
        push_image(&format!("docker://{}/library/hosted:v1", origin.addr), None);
    let dir = tempfile::tempdir().unwrap();
    let near = mirror(
        dir.path(),
        &format!(
            "[[upstream]]\nname = \"docker.io\"\nurl = \"http://{}\"\nprefix = \"hub\"\n",
            origin.addr
        ),
        &[],
    );
    let hosts = dir.path().join("hosts");
    std::fs::create_dir_all(hosts.join("docker.io")).unwrap();
    std::fs::write(
        hosts.join("docker.io/hosts.toml"),
        format!(
            "server = \"https://registry-1.docker.io\"\n\
             [host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            near.addr
        ),
    )
    .unwrap();
    let namespace = format!("berth-test-{}", unique_seed());
    let ctr = || {
        let mut c = std::process::Command::new("ctr");
        c.args(["--address", CONTAINERD_SOCKET, "--namespace", &namespace]);
        c
    };
    let image = "docker.io/library/hosted:v1";
    ok(ctr()
        .args(["images", "pull", "--hosts-dir"])
        .arg(&hosts)
        .arg(image));
    let listed = ok(ctr().args(["images", "list", "--quiet"]));
    let checked = ok(ctr().args(["images", "check"]));
    ok(ctr().args(["images", "rm", "--sync", image]));
    assert!(listed.contains(image), "{listed}");
    assert!(
        checked.contains(manifest_digest.as_str()) && checked.contains("complete"),
        "{checked}"
    );
    // Kept under the upstream's prefix: served with the upstream gone.
    drop(origin);
    manifest(
        &near.client(),
        &format!("/v2/hub/library/hosted/manifests/{manifest_digest}"),
    )
    .await
    .expect(200, None);
}

/// What nobody pulls is evicted: a mirror with `evict_after` keeps pulling one of three names
/// that share every blob and stops pulling the others. The unpulled manifest is removed by the
/// collector and its links after the grace period, while the shared blobs stay whole for the
/// name still pulled, even with the upstream gone; a manifest a client pushed over what the
/// mirror fetched (`allow_push`) is the registry's own and stays unpulled.
async fn a_mirror_evicts_what_nobody_pulled_and_keeps_blobs_another_name_shares() {
    let origin = Server::start_with(&[("BERTH_REDIRECT", "false")]);
    let oc = origin.client();
    let image = oc.push_image("library/app", "v1", unique_seed()).await;
    // The same image under two more names: every blob shared.
    for name in ["library/twin", "library/claimed"] {
        for blob in [&image.config, &image.layer] {
            oc.push_blob(name, blob).await;
        }
        oc.put_manifest(
            name,
            "v1",
            "application/vnd.oci.image.manifest.v1+json",
            &image.manifest,
        )
        .await
        .expect(201, None);
    }
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let mirror = mirror(
        dir.path(),
        &format!(
            "[[upstream]]\nname = \"origin\"\nurl = \"http://{}\"\nprefix = \"origin\"\n\
             tag_ttl = \"1h\"\nevict_after = \"4s\"\nallow_push = true\n",
            origin.addr
        ),
        &[
            ("BERTH_ADMIN_LISTEN", &admin),
            ("BERTH_GC_INTERVAL", "1s"),
            ("BERTH_GC_GRACE_PERIOD", "2s"),
        ],
    );
    let c = mirror.client();
    let layer_digest = sha256(&image.layer);
    for name in ["app", "twin", "claimed"] {
        manifest(&c, &format!("/v2/origin/library/{name}/manifests/v1"))
            .await
            .expect(200, None);
        for blob in [&image.config, &image.layer] {
            let got = c
                .get(&format!("/v2/origin/library/{name}/blobs/{}", sha256(blob)))
                .await;
            got.expect(200, None);
            assert_eq!(&got.body.to_vec(), blob);
        }
    }
    // A client pushes the manifest claimed's mirror fetched (allow_push lets it): from now
    // on it is the registry's own, and nobody pulling it does not evict it.
    c.put_manifest(
        "origin/library/claimed",
        "mine",
        "application/vnd.oci.image.manifest.v1+json",
        &image.manifest,
    )
    .await
    .expect(201, None);
    drop(origin);

    // twin is pulled (by digest, as clients do after the tag) every half second; app never
    // again. app's manifest goes, then its links; twin keeps everything.
    let evicted = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            manifest(
                &c,
                &format!("/v2/origin/library/twin/manifests/{}", image.digest),
            )
            .await
            .expect(200, None);
            // Not app's manifest: reading it would be a pull. Its blob links go last.
            let layer = c
                .get(&format!("/v2/origin/library/app/blobs/{layer_digest}"))
                .await;
            if layer.status == 503 {
                return;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), evicted)
        .await
        .expect("app's manifest and links are evicted within a minute");
    // Not kept, and the upstream gone: the 503 says so, naming it.
    for reference in ["v1", image.digest.as_str()] {
        let gone = manifest(&c, &format!("/v2/origin/library/app/manifests/{reference}")).await;
        gone.expect(503, Some("UNAVAILABLE"));
        assert!(String::from_utf8_lossy(&gone.body).contains("upstream origin"));
    }
    // twin: still whole, by tag (the tag stays kept for its TTL) and every blob.
    let twin = manifest(&c, "/v2/origin/library/twin/manifests/v1").await;
    twin.expect(200, None);
    assert_eq!(twin.body.to_vec(), image.manifest);
    for blob in [&image.config, &image.layer] {
        let got = c
            .get(&format!("/v2/origin/library/twin/blobs/{}", sha256(blob)))
            .await;
        got.expect(200, None);
        assert_eq!(&got.body.to_vec(), blob, "a shared blob stays whole");
    }
    // The pushed manifest was never pulled again, and stays with its blobs.
    let claimed = manifest(
        &c,
        &format!("/v2/origin/library/claimed/manifests/{}", image.digest),
    )
    .await;
    claimed.expect(200, None);
    assert_eq!(claimed.body.to_vec(), image.manifest);
    let got = c
        .get(&format!("/v2/origin/library/claimed/blobs/{layer_digest}"))
        .await;
    got.expect(200, None);
    assert_eq!(got.body.to_vec(), image.layer);
    let exposition = scrape(&Client::new(&format!("http://{admin}"))).await;
    assert!(
        metric_sum(
            &exposition,
            "berth_gc_removed_total",
            &[("what", "mirrored_manifests")]
        ) >= 1.0
    );
}

/// A second Docker engine of its own (data, sockets and containerd namespace apart from the
/// one the other tests use) started with `--registry-mirror`, so that a pull of a Docker Hub
/// name asks the mirror first; stopped and cleaned up when dropped.
struct MirroredEngine {
    dir: tempfile::TempDir,
    daemon: std::process::Child,
    bridge: String,
}

impl MirroredEngine {
    fn start(mirror: &str) -> MirroredEngine {
        require("dockerd");
        let dir = tempfile::Builder::new()
            .prefix("bm")
            .tempdir_in("/tmp")
            .unwrap();
        let namespace = format!("berth-mirror-{}", unique_seed() % 1_000_000);
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        // A bridge of its own: started with `--bridge=none`, dockerd deletes `docker0`, the
        // bridge of the engine every other test (and the image build) uses.
        let bridge = format!("bm{}", unique_seed() % 1_000_000);
        for args in [
            vec!["link", "add", "name", &bridge, "type", "bridge"],
            vec!["addr", "add", "172.30.213.1/24", "dev", &bridge],
            vec!["link", "set", &bridge, "up"],
        ] {
            ok(std::process::Command::new("ip").args(args));
        }
        let daemon = std::process::Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("x"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.path().join("d.sock").display()))
            .args(["--containerd", CONTAINERD_SOCKET])
            .args(["--containerd-namespace", &namespace])
            .args([
                "--containerd-plugins-namespace",
                &format!("{namespace}-plugins"),
            ])
            .args(["--bridge", &bridge, "--iptables=false", "--ip6tables=false"])
            .args(["--storage-driver", "overlay2"])
            .args(["--registry-mirror", &format!("http://{mirror}")])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd starts");
        let engine = MirroredEngine {
            dir,
            daemon,
            bridge,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !engine
            .docker()
            .arg("info")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the second dockerd did not answer: {}",
                std::fs::read_to_string(engine.dir.path().join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        engine
    }

    fn docker(&self) -> std::process::Command {
        let mut c = std::process::Command::new("docker");
        c.arg("-H")
            .arg(format!(
                "unix://{}",
                self.dir.path().join("d.sock").display()
            ))
            .env("DOCKER_CONFIG", self.dir.path().join("client"));
        c
    }
}

impl Drop for MirroredEngine {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.daemon.id().to_string())
            .status();
        let _ = self.daemon.wait();
        let _ = std::process::Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .status();
    }
}

/// Whether the network interface `name` exists.
fn interface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Docker's `registry-mirrors`: an engine configured with the mirror pulls a Docker Hub name
/// (`library/…`, resolved against docker.io) through it from the upstream standing in for
/// Docker Hub, gets the manifest digest pushed there, and runs the image.
async fn dockerd_pulls_docker_hub_names_through_its_registry_mirrors() {
    let origin = Server::start();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed (.ci/run installs it)");
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let tar = work.path().join("busybox.tar");
    tar_dir(&root, &tar);
    // Built on the tests' main engine and pushed to the origin as Docker Hub's library name.
    let tag = format!("v{}", unique_seed() % 1_000_000);
    let pushed_name = format!("{}/library/mirrored-busybox:{tag}", origin.addr);
    let main_docker = || {
        let mut c = std::process::Command::new("docker");
        c.env("DOCKER_CONFIG", work.path().join("client"));
        c
    };
    ok(main_docker()
        .args(["import", "--change", "ENTRYPOINT [\"/bin/busybox\"]"])
        .arg(&tar)
        .arg(&pushed_name));
    ok(main_docker().args(["push", &pushed_name]));
    ok(main_docker().args(["rmi", &pushed_name]));
    let pushed_digest = ok(skopeo()
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{pushed_name}")));

    let dir = tempfile::tempdir().unwrap();
    let near = mirror(
        dir.path(),
        &format!(
            "[[upstream]]\nname = \"docker.io\"\nurl = \"http://{}\"\nprefix = \"hub\"\ndefault = true\n",
            origin.addr
        ),
        &[],
    );
    let main_bridge = interface_exists("docker0");
    let engine = MirroredEngine::start(&near.addr.to_string());
    let hub_name = format!("mirrored-busybox:{tag}");
    ok(engine.docker().args(["pull", &hub_name]));
    let digests = ok(engine.docker().args([
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &hub_name,
    ]));
    assert!(
        digests.contains(pushed_digest.trim()),
        "the engine got the image as pushed: {digests} vs {pushed_digest}"
    );
    let said = ok(engine.docker().args([
        "run",
        "--rm",
        "--network",
        "none",
        &hub_name,
        "echo",
        "hello through the mirror",
    ]));
    assert_eq!(said.trim(), "hello through the mirror");
    assert!(
        !near
            .deployment
            .log_lines("fetched a blob from upstream")
            .is_empty(),
        "the engine's pull went through the mirror"
    );
    ok(engine.docker().args(["rmi", &hub_name]));
    drop(engine);
    assert_eq!(
        interface_exists("docker0"),
        main_bridge,
        "the second engine leaves the main engine's bridge as it was"
    );
    // Kept: served with the upstream gone.
    drop(origin);
    manifest(
        &near.client(),
        &format!(
            "/v2/library/mirrored-busybox/manifests/{}",
            pushed_digest.trim()
        ),
    )
    .await
    .expect(200, None);
}

/// How a gated upstream goes on after the first part of a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gate {
    Closed,
    Open,
    Cut,
}

/// An upstream serving `blobs` (path → bytes) that sends the first `gate_at` bytes of each,
/// then holds the rest until `gate` opens (or closes the connection when it says `Cut`); it
/// counts the blob GETs it answers.
async fn gated_upstream(
    blobs: std::collections::HashMap<String, Vec<u8>>,
    gate_at: usize,
    gate: tokio::sync::watch::Receiver<Gate>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let blobs = std::sync::Arc::new(blobs);
    let gets = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&gets);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (blobs, gets, mut gate) = (
                std::sync::Arc::clone(&blobs),
                std::sync::Arc::clone(&counted),
                gate.clone(),
            );
            tokio::spawn(async move {
                let Some((method, path)) = request_line(&mut socket).await else {
                    return;
                };
                let Some(body) = blobs.get(&path) else {
                    let status = if path == "/v2/" {
                        "200 OK"
                    } else {
                        "404 Not Found"
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                    return;
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                if method != "GET" {
                    return;
                }
                gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = socket.write_all(&body[..gate_at]).await;
                let went_on = gate.wait_for(|g| *g != Gate::Closed).await.map(|g| *g);
                if matches!(went_on, Ok(Gate::Open)) {
                    let _ = socket.write_all(&body[gate_at..]).await;
                }
                let _ = socket.shutdown().await;
            });
        }
    });
    (addr, gets)
}

/// A pull streaming a blob: its status, and a task collecting its bytes whose count so far
/// is in the returned counter.
async fn streaming_pull(
    c: &Client,
    path: &str,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<Result<Vec<u8>, String>>,
) {
    let mut answer = c.request(Method::GET, path).send().await.unwrap();
    assert_eq!(answer.status(), 200, "{path}");
    let read = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&read);
    let body = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(chunk) = answer.chunk().await.map_err(|e| e.to_string())? {
            all.extend_from_slice(&chunk);
            counter.store(all.len(), std::sync::atomic::Ordering::SeqCst);
        }
        Ok(all)
    });
    (read, body)
}

/// Waits until `read` holds at least `bytes`, for a few seconds.
async fn has_read(read: &std::sync::atomic::AtomicUsize, bytes: usize, who: &str) {
    for _ in 0..300 {
        if read.load(std::sync::atomic::Ordering::SeqCst) >= bytes {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!(
        "{who} read {} bytes of a running fetch, expected at least {bytes}",
        read.load(std::sync::atomic::Ordering::SeqCst)
    );
}

/// Three pulls of `path` that each have read `joined_by` bytes: the one that starts the
/// fetch and a late one on replica `a`, and a late one on replica `b`.
async fn joined_pulls(
    a: &Server,
    b: &Server,
    path: &str,
    joined_by: usize,
) -> [(
    &'static str,
    tokio::task::JoinHandle<Result<Vec<u8>, String>>,
); 3] {
    let mut pulls = Vec::new();
    for (who, replica) in [("starter", a), ("late", a), ("other replica", b)] {
        let (read, pull) = streaming_pull(&replica.client(), path).await;
        has_read(&read, joined_by, who).await;
        pulls.push((who, pull));
    }
    pulls
        .try_into()
        .unwrap_or_else(|_| unreachable!("three pulls"))
}

/// Pulls that join a fetch already running — on the replica running it, and on another
/// replica, through the first — read the bytes fetched so far at once and then follow the
/// fetch; the upstream serves the blob once. When the upstream then cuts the body short,
/// every one of them gets a failed body, never a whole one, and nothing is committed.
async fn pulls_joining_a_running_fetch_read_what_it_has_and_follow_on_any_replica() {
    let whole = random_bytes(16 << 20, unique_seed());
    let cut = random_bytes(16 << 20, unique_seed());
    let (whole_digest, cut_digest) = (sha256(&whole), sha256(&cut));
    // Served under a digest that is not theirs: right length, wrong bytes.
    let wrong_digest = sha256(&random_bytes(16 << 20, unique_seed()));
    let gate_at = 8 << 20;
    let mut blobs = std::collections::HashMap::new();
    blobs.insert(
        format!("/v2/library/slow/blobs/{whole_digest}"),
        whole.clone(),
    );
    blobs.insert(format!("/v2/library/slow/blobs/{cut_digest}"), cut);
    blobs.insert(
        format!("/v2/library/slow/blobs/{wrong_digest}"),
        random_bytes(16 << 20, unique_seed()),
    );
    let (gate, gated) = tokio::sync::watch::channel(Gate::Closed);
    let (upstream, gets) = gated_upstream(blobs, gate_at, gated).await;
    let dir = tempfile::tempdir().unwrap();
    let first = mirror(
        dir.path(),
        &format!("[[upstream]]\nname = \"slow\"\nurl = \"http://{upstream}\"\ndefault = true\n"),
        &[],
    );
    // Both replicas advertise where they can be reached.
    let a = first.advertised_sibling();
    let b = first.advertised_sibling();
    drop(first);
    // Half the blob goes through at once; what the pulls read before the gate opens cannot
    // have come from storage (nothing is stored before the whole blob is).
    let joined_by = gate_at / 2;
    let path = format!("/v2/library/slow/blobs/{whole_digest}");
    let pulls = joined_pulls(&a, &b, &path, joined_by).await;
    // The relay route hands a running fetch only to a caller naming its claim's owner id.
    let relay = format!("/_berth/mirror-fetches/{whole_digest}");
    for owner in [None, Some("not-the-owner")] {
        let mut request = a.client().request(Method::GET, &relay);
        if let Some(owner) = owner {
            request = request.header("berth-fetch-owner", owner);
        }
        assert_eq!(
            request.send().await.unwrap().status(),
            404,
            "owner {owner:?}"
        );
    }
    gate.send_replace(Gate::Open);
    for (who, pull) in pulls {
        let bytes = pull.await.unwrap().unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(
            (bytes.len(), sha256(&bytes)),
            (whole.len(), whole_digest.clone()),
            "{who}"
        );
    }
    assert_eq!(
        gets.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "fetched once"
    );
    let stored = b.client().get(&path).await;
    stored.expect(200, None);
    assert_eq!(sha256(&stored.body), whole_digest);
    assert_eq!(
        gets.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "then kept"
    );

    // The same, and the upstream cuts the body after the gate; then whole but wrong bytes
    // (the last chunk is held back from every follower until the digest verifies, which it
    // never does): every follower's body fails.
    for (digest, then) in [(&cut_digest, Gate::Cut), (&wrong_digest, Gate::Open)] {
        gate.send_replace(Gate::Closed);
        let path = format!("/v2/library/slow/blobs/{digest}");
        let pulls = joined_pulls(&a, &b, &path, joined_by).await;
        gate.send_replace(then);
        for (who, pull) in pulls {
            let outcome = pull.await.unwrap();
            assert!(
                outcome.is_err(),
                "{who} got a whole body from a fetch that failed ({then:?}, {} bytes)",
                outcome.map(|b| b.len()).unwrap_or_default()
            );
        }
    }
    let committed = a.deployment.log_lines("fetched a blob from upstream");
    assert_eq!(
        committed.len(),
        1,
        "only the whole blob was committed: {committed:?}"
    );
    assert!(
        committed[0].contains(whole_digest.as_str()),
        "{committed:?}"
    );
}

/// A tag list asked for whole is read whole from an upstream that pages it by default
/// (following its `Link` header, on the upstream only); a page asked for is passed through.
async fn a_mirror_lists_every_page_of_an_upstream_tag_list() {
    let list = |tags: &[&str], next: Option<&str>| Canned {
        status: 200,
        headers: next
            .map(|n| vec![("Link", format!("<{n}>; rel=\"next\""))])
            .unwrap_or_default(),
        body: serde_json::to_vec(&serde_json::json!({"name": "library/many", "tags": tags}))
            .unwrap(),
        sent: usize::MAX,
    };
    let mut routes = std::collections::HashMap::new();
    routes.insert("/v2/".to_owned(), list(&[], None));
    routes.insert(
        "/v2/library/many/tags/list".to_owned(),
        list(&["a", "b"], Some("/v2/library/many/tags/list-2?n=2&last=b")),
    );
    routes.insert(
        "/v2/library/many/tags/list-2".to_owned(),
        list(&["c", "d"], Some("/v2/library/many/tags/list-3?n=2&last=d")),
    );
    routes.insert(
        "/v2/library/many/tags/list-3".to_owned(),
        list(&["e"], None),
    );
    routes.insert(
        "/v2/library/loop/tags/list".to_owned(),
        list(&["z"], Some("/v2/library/loop/tags/list?last=z")),
    );
    routes.insert(
        "/v2/library/elsewhere/tags/list".to_owned(),
        list(
            &["x"],
            Some("http://elsewhere.invalid/v2/library/elsewhere/tags/list?last=x"),
        ),
    );
    for canned in routes.values_mut() {
        canned.sent = canned.body.len();
    }
    let upstream = canned_upstream(routes).await;
    let dir = tempfile::tempdir().unwrap();
    let near = mirror(
        dir.path(),
        &format!("[[upstream]]\nname = \"paged\"\nurl = \"http://{upstream}\"\ndefault = true\n"),
        &[],
    );
    let c = near.client();
    let tags = |answer: &Answer| -> Vec<String> {
        let listed: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        serde_json::from_value(listed["tags"].clone()).unwrap()
    };
    let whole = c.get("/v2/library/many/tags/list").await;
    whole.expect(200, None);
    assert_eq!(tags(&whole), ["a", "b", "c", "d", "e"]);
    let page = c.get("/v2/library/many/tags/list?n=2").await;
    page.expect(200, None);
    assert_eq!(
        tags(&page),
        ["a", "b"],
        "a page asked for is one upstream page"
    );
    let elsewhere = c.get("/v2/library/elsewhere/tags/list").await;
    elsewhere.expect(200, None);
    assert_eq!(
        tags(&elsewhere),
        ["x"],
        "a link to another origin is not followed"
    );
}

crate::harness::trials! {
    dockerd_pulls_docker_hub_names_through_its_registry_mirrors.needs(Docker);
    a_mirror_evicts_what_nobody_pulled_and_keeps_blobs_another_name_shares;
    a_mirror_reads_through_a_tls_upstream_in_token_mode;
    an_upstream_answering_garbage_never_gets_a_wrong_blob_committed_or_served;
    a_mirror_lists_every_page_of_an_upstream_tag_list;
    a_mirror_reads_through_a_distribution_upstream_with_htpasswd;
    containerd_pulls_through_a_hosts_toml_mirror_routed_by_ns.needs(Docker);
    podman_pulls_docker_hub_names_through_a_registries_conf_mirror;
    a_mirror_reads_through_with_credentials_and_serves_what_it_kept_when_the_upstream_is_down;
    concurrent_cold_pulls_on_two_replicas_fetch_a_blob_from_the_upstream_once.needs(SharedState);
    a_fetch_whose_replica_died_is_taken_over_when_its_lease_runs_out.needs(SharedState);
    pulls_joining_a_running_fetch_read_what_it_has_and_follow_on_any_replica.needs(SharedState);
}
