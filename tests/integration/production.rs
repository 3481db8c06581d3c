//! The production shape: bounded memory, S3's part rules, any replica serving any request,
//! crashes mid-request, presigned redirects and a database that goes away and comes back.

use std::time::Duration;

use reqwest::Method;

use crate::util::*;

const MIB: usize = 1024 * 1024;

async fn one_gib_upload_keeps_server_memory_bounded() {
    let server = Server::start();
    let c = server.client();
    let (body, digest) = generated_body(1024 * MIB, unique_seed(), MIB);
    let location = c.start_upload("big").await;
    let pid = server.pid();
    let sampler = tokio::spawn(async move {
        let mut peak = 0u64;
        loop {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let rss = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024;
            peak = peak.max(rss);
            tokio::time::sleep(Duration::from_millis(20)).await;
            if rss == 0 {
                return peak;
            }
        }
    });
    let a = c.send(c.request(Method::PATCH, &location).body(body)).await;
    a.expect(202, None);
    c.send(
        c.request(Method::PUT, a.header("location").unwrap())
            .query(&[("digest", &digest)]),
    )
    .await
    .expect(201, None);
    let (_, hwm) = server.memory();
    sampler.abort();
    assert!(
        hwm < 200 * MIB as u64,
        "peak RSS {} MiB during a 1 GiB upload",
        hwm / MIB as u64
    );
    let head = c
        .call(Method::HEAD, &format!("/v2/big/blobs/{digest}"))
        .await;
    head.expect(200, None);
    assert_eq!(
        head.header("content-length"),
        Some((1024 * MIB).to_string().as_str())
    );
}

async fn chunks_of_every_size_assemble_into_the_right_blob() {
    let server = Server::start();
    let c = server.client();
    let sizes = [MIB, 4 * MIB, 5 * MIB, 7 * MIB, 16 * MIB, 1];
    let total: usize = sizes.iter().sum();
    let data = random_bytes(total, unique_seed());
    let digest = sha256(&data);
    let mut location = c.start_upload("sizes").await;
    let mut at = 0;
    for size in sizes {
        let a = c.patch_chunk(&location, &data, at..at + size).await;
        a.expect(202, None);
        at += size;
        assert_eq!(a.header("range"), Some(format!("0-{}", at - 1).as_str()));
        location = a.header("location").unwrap().to_owned();
    }
    c.close_upload(&location, &digest).await.expect(201, None);
    let got = c.get_following(&format!("/v2/sizes/blobs/{digest}")).await;
    assert!(got.body[..] == data[..]);
    if server.deployment.backend.uses_s3() {
        assert_no_small_non_last_parts(&server.log_text());
    }
}

/// Every part but the last of each multipart upload is at least 5 MiB (what AWS enforces).
fn assert_no_small_non_last_parts(log: &str) {
    let mut parts: std::collections::BTreeMap<String, Vec<(u64, u64)>> = Default::default();
    for line in log.lines().filter(|l| l.contains("uploaded part")) {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .map(|v| v.trim_matches('"').to_owned())
        };
        let (Some(key), Some(part), Some(size)) = (field("key"), field("part"), field("size"))
        else {
            continue;
        };
        parts
            .entry(key)
            .or_default()
            .push((part.parse().unwrap(), size.parse().unwrap()));
    }
    assert!(!parts.is_empty(), "the log shows the parts uploaded");
    for (key, mut list) in parts {
        list.sort();
        for (number, size) in &list[..list.len() - 1] {
            assert!(
                *size >= 5 * MIB as u64,
                "{key}: part {number} of {size} bytes is not the last"
            );
        }
    }
}

async fn two_processes_take_alternate_patches_of_one_upload() {
    let a = Server::start();
    let b = a.sibling();
    let (ca, cb) = (a.client(), b.client());
    let sizes = [3 * MIB, 3 * MIB, 7 * MIB, 2 * MIB + 5];
    let data = random_bytes(sizes.iter().sum(), unique_seed());
    let digest = sha256(&data);
    let location = ca.start_upload("replicas").await;
    let mut at = 0;
    for (i, size) in sizes.iter().enumerate() {
        let c = if i % 2 == 0 { &ca } else { &cb };
        c.patch_chunk(&location, &data, at..at + size)
            .await
            .expect(202, None);
        at += size;
        let other = if i % 2 == 0 { &cb } else { &ca };
        assert_eq!(
            other.get(&location).await.header("range"),
            Some(format!("0-{}", at - 1).as_str())
        );
    }
    cb.close_upload(&location, &digest).await.expect(201, None);
    let got = ca
        .get_following(&format!("/v2/replicas/blobs/{digest}"))
        .await;
    assert!(got.body[..] == data[..]);
    if a.deployment.backend.uses_s3() {
        assert_no_small_non_last_parts(&format!("{}\n{}", a.log_text(), b.log_text()));
    }
}

async fn process_killed_mid_patch_and_the_client_resumes_on_another() {
    let mut a = Server::start();
    let b = a.sibling();
    let (ca, cb) = (a.client(), b.client());
    let data = random_bytes(40 * MIB + 99, unique_seed());
    let digest = sha256(&data);
    let location = ca.start_upload("failover").await;
    let stalled = futures::StreamExt::then(
        futures::stream::iter(
            data.chunks(64 * 1024)
                .map(|c| c.to_vec())
                .collect::<Vec<_>>()
                .into_iter()
                .enumerate(),
        ),
        |(i, c)| async move {
            if i * 64 * 1024 == 35 * MIB {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Ok::<_, std::io::Error>(c)
        },
    );
    let pending = tokio::spawn(
        ca.request(Method::PATCH, &location)
            .body(reqwest::Body::wrap_stream(stalled))
            .send(),
    );
    let probe = cb.clone();
    let loc = location.clone();
    eventually("32 MiB durable", Duration::from_secs(60), async || {
        let s = probe.get(&loc).await;
        s.header("range")
            .and_then(|r| r.strip_prefix("0-"))
            .and_then(|e| e.parse::<usize>().ok())
            .unwrap_or(0)
            + 1
            >= 32 * MIB
    })
    .await;
    a.kill();
    let _ = pending.await;
    let s = cb.get(&location).await;
    let held = s
        .header("range")
        .unwrap()
        .strip_prefix("0-")
        .unwrap()
        .parse::<usize>()
        .unwrap()
        + 1;
    assert!((32 * MIB..=35 * MIB).contains(&held), "held {held}");
    cb.patch_chunk(&location, &data, held..data.len())
        .await
        .expect(202, None);
    cb.close_upload(&location, &digest).await.expect(201, None);
    assert!(
        cb.get_following(&format!("/v2/failover/blobs/{digest}"))
            .await
            .body[..]
            == data[..]
    );
}

async fn presigned_redirects_work_with_plain_curl_and_expire() {
    // The same server under another name, as clients outside would reach it.
    let endpoint = s3_server().endpoint;
    let public = if endpoint.contains("127.0.0.1") {
        endpoint.replace("127.0.0.1", "localhost")
    } else {
        endpoint.replace("localhost", "127.0.0.1")
    };
    let server = Server::start_with(&[
        ("BERTH_S3_PRESIGN_EXPIRY", "2s"),
        ("BERTH_S3_PUBLIC_ENDPOINT", &public),
    ]);
    let c = server.client();
    let data = random_bytes(3 * MIB + 11, unique_seed());
    let digest = c.push_blob("presign", &data).await;
    let a = c.get(&format!("/v2/presign/blobs/{digest}")).await;
    a.expect(307, None);
    let url = a.header("location").unwrap().to_owned();
    assert!(
        url.starts_with(&public),
        "presigned for the public endpoint: {url}"
    );
    let out = tempfile::NamedTempFile::new().unwrap();
    let status = std::process::Command::new("curl")
        .args(["-s", "-o"])
        .arg(out.path())
        .args(["-w", "%{http_code}", &url])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&status.stdout), "200");
    assert!(
        std::fs::read(out.path()).unwrap() == data,
        "curl gets the exact bytes"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let expired = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&expired.stdout).to_string();
    assert!(
        code.starts_with('4'),
        "an expired URL is refused, got {code}"
    );
}

async fn streaming_through_berth_honours_range_when_redirects_are_off() {
    let server = Server::start_with(&[("BERTH_REDIRECT", "false")]);
    let c = server.client();
    let data = random_bytes(MIB + 3, unique_seed());
    let digest = c.push_blob("stream", &data).await;
    let whole = c.get(&format!("/v2/stream/blobs/{digest}")).await;
    whole.expect(200, None);
    assert!(whole.body[..] == data[..]);
    let part = c
        .send(
            c.request(Method::GET, &format!("/v2/stream/blobs/{digest}"))
                .header("range", "bytes=1000-1999"),
        )
        .await;
    part.expect(206, None);
    assert_eq!(&part.body[..], &data[1000..2000]);
}

async fn expired_uploads_leave_no_objects_or_multipart_uploads_in_s3() {
    let server = Server::start_with(&[
        ("BERTH_UPLOAD_TTL", "2s"),
        ("BERTH_MAINTENANCE_INTERVAL", "300ms"),
    ]);
    let prefix = server.deployment.s3_prefix.clone().unwrap();
    let c = server.client();
    // One session with parts and a staged tail, one with staged bytes only (kept in the
    // database, not in S3).
    let first = c.start_upload("abandon").await;
    c.send(
        c.request(Method::PATCH, &first)
            .body(random_bytes(18 * MIB, 1)),
    )
    .await
    .expect(202, None);
    let second = c.start_upload("abandon").await;
    c.send(c.request(Method::PATCH, &second).body(random_bytes(MIB, 2)))
        .await
        .expect(202, None);
    let (objects, uploads) = s3_listing(&prefix).await;
    assert!(
        !uploads.is_empty(),
        "the first session holds a multipart upload: {objects:?} {uploads:?}"
    );
    eventually("expiry to clean S3", Duration::from_secs(30), async || {
        let (objects, uploads) = s3_listing(&prefix).await;
        objects.is_empty() && uploads.is_empty()
    })
    .await;
    c.get(&first).await.expect(404, Some("BLOB_UPLOAD_UNKNOWN"));
}

async fn completed_uploads_leave_no_staging_or_stray_multipart_uploads() {
    let server = Server::start();
    let prefix = server.deployment.s3_prefix.clone().unwrap();
    let c = server.client();
    let data = random_bytes(23 * MIB + 7, unique_seed());
    let digest = sha256(&data);
    let location = c.start_upload("tidy").await;
    let mut at = 0;
    for size in [2 * MIB, 2 * MIB, 17 * MIB, 2 * MIB + 7] {
        c.patch_chunk(&location, &data, at..at + size)
            .await
            .expect(202, None);
        at += size;
    }
    c.close_upload(&location, &digest).await.expect(201, None);
    // The same blob again: deduplicated, the second copy removed.
    c.push_blob("tidy", &data).await;
    let (objects, uploads) = s3_listing(&prefix).await;
    assert!(uploads.is_empty(), "no multipart upload left: {uploads:?}");
    assert_eq!(objects.len(), 1, "one object for one blob: {objects:?}");
    assert!(!objects[0].contains("/uploads/"));
}

// Multi-threaded: the proxy must keep running while the test thread waits on the server.
async fn database_unreachable_answers_503_then_recovers_without_restart() {
    // Berth reaches Postgres through a proxy the test can cut.
    let (_database, proxy, proxied) = database_behind_proxy().await;
    let server = Server::start_with(&[
        ("BERTH_DATABASE_URL", &proxied),
        ("BERTH_DB_ACQUIRE_TIMEOUT", "1s"),
    ]);
    let c = server.client();
    let image = c.push_image("dbdown", "v1", unique_seed()).await;

    proxy.disable();
    let a = c.get("/v2/dbdown/manifests/v1").await;
    a.expect(503, Some("UNAVAILABLE"));
    assert!(
        a.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("database")
    );
    c.call(Method::POST, "/v2/dbdown/blobs/uploads/")
        .await
        .expect(503, Some("UNAVAILABLE"));
    c.get("/readyz").await.expect(503, None);
    c.get("/healthz").await.expect(200, None);

    proxy.enable();
    let probe_client = c.clone();
    eventually("recovery", Duration::from_secs(20), async || {
        probe_client
            .get("/v2/dbdown/manifests/v1")
            .await
            .status
            .as_u16()
            == 200
    })
    .await;
    assert_eq!(
        &c.get("/v2/dbdown/manifests/v1").await.body[..],
        &image.manifest[..]
    );
    c.get("/readyz").await.expect(200, None);
    c.push_blob("dbdown", b"after recovery").await;
}

async fn filesystem_store_without_direct_io() {
    let server = Server::start_with(&[
        ("BERTH_FS_DIRECT_IO", "false"),
        ("BERTH_FS_PART_SIZE", "1MiB"),
    ]);
    let c = server.client();
    let data = random_bytes(3 * MIB + 333, unique_seed());
    let digest = sha256(&data);
    let mut location = c.start_upload("buffered").await;
    let mut at = 0;
    for size in [1000, MIB + 5, data.len() - MIB - 1005] {
        let a = c.patch_chunk(&location, &data, at..at + size).await;
        a.expect(202, None);
        location = a.header("location").unwrap().to_owned();
        at += size;
    }
    c.close_upload(&location, &digest).await.expect(201, None);
    assert!(c.get(&format!("/v2/buffered/blobs/{digest}")).await.body[..] == data[..]);
    assert!(
        server.log_text().contains("direct_io=false"),
        "buffered writes were used"
    );
}

async fn a_tag_pushed_on_one_process_is_served_by_every_other_at_once() {
    let a = Server::start();
    let b = a.sibling();
    let (ca, cb) = (a.client(), b.client());
    let mut images = Vec::new();
    for i in 0..4 {
        images.push(
            ca.push_image("fresh", &format!("v{i}"), unique_seed() + i)
                .await,
        );
    }
    // Warm both processes' caches on the tag, then move it back and forth.
    for round in 0..20 {
        let image = &images[round % images.len()];
        let (writer, reader) = if round % 2 == 0 {
            (&ca, &cb)
        } else {
            (&cb, &ca)
        };
        for _ in 0..3 {
            reader.get("/v2/fresh/manifests/latest").await;
        }
        writer
            .put_manifest("fresh", "latest", OCI_MANIFEST, &image.manifest)
            .await
            .expect(201, None);
        for c in [&ca, &cb] {
            let got = c.get("/v2/fresh/manifests/latest").await;
            got.expect(200, None);
            assert_eq!(
                got.header("docker-content-digest"),
                Some(image.digest.as_str()),
                "round {round}: stale manifest served"
            );
        }
    }
    ca.call(Method::DELETE, "/v2/fresh/manifests/latest")
        .await
        .expect(202, None);
    cb.get("/v2/fresh/manifests/latest")
        .await
        .expect(404, Some("MANIFEST_UNKNOWN"));
}

// Multi-threaded: the proxy must keep running while the test thread waits on the server.
async fn small_s3_chunks_are_answered_before_their_part_lands_and_survive_a_kill() {
    // Berth reaches S3 through a proxy the test can stall.
    let s3 = s3_server();
    let authority = s3
        .endpoint
        .split_once("://")
        .map_or(s3.endpoint.as_str(), |(_, rest)| rest)
        .trim_end_matches('/')
        .to_owned();
    let proxy = TcpProxy::to_authority(&authority).await;
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let deployment = Deployment::new(&[
        ("BERTH_S3_ENDPOINT", &endpoint),
        ("BERTH_S3_TIMEOUT", "120s"),
    ]);
    let mut first = deployment.start();
    let c = first.client();
    let data = random_bytes(13 * MIB, unique_seed());
    let location = c.start_upload("promoted").await;
    // Five 1 MiB chunks make the first part, written in the background; four more stay staged.
    for i in 0..9 {
        c.patch_chunk(&location, &data, i * MIB..(i + 1) * MIB)
            .await
            .expect(202, None);
    }
    let prefix = deployment.s3_prefix.clone().unwrap();
    let s3_client = s3.client().await;
    eventually(
        "the first part to land",
        Duration::from_secs(20),
        async || {
            let uploads = s3_client
                .list_multipart_uploads()
                .bucket(&s3.bucket)
                .prefix(&prefix)
                .send()
                .await
                .unwrap();
            let Some(upload) = uploads.uploads().first() else {
                return false;
            };
            let parts = s3_client
                .list_parts()
                .bucket(&s3.bucket)
                .key(upload.key().unwrap())
                .upload_id(upload.upload_id().unwrap())
                .send()
                .await
                .unwrap();
            !parts.parts().is_empty()
        },
    )
    .await;
    // Time for the part to be recorded after it landed.
    tokio::time::sleep(Duration::from_millis(500)).await;

    proxy.stall();
    // The tenth chunk makes the next part: the answer comes once its bytes are staged, while
    // the part cannot reach S3.
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        c.patch_chunk(&location, &data, 9 * MIB..10 * MIB),
    )
    .await
    .expect("the chunk is answered while S3 does not answer");
    answer.expect(202, None);
    first.kill();
    proxy.enable();

    let second = deployment.start();
    let c = second.client();
    assert_eq!(c.upload_offset(&location).await, 10 * MIB);
    c.complete_upload("promoted", &location, &data, 10 * MIB)
        .await;
}

async fn small_s3_chunks_alternating_between_processes_make_one_intact_blob() {
    let first = Server::start();
    let second = first.sibling();
    let clients = [first.client(), second.client()];
    // Chunk sizes that bring the staged bytes to a part's worth on either process, sometimes
    // while the other is still writing the previous part, and a large chunk among them.
    let sizes = [
        MIB,
        MIB,
        MIB,
        MIB,
        MIB,
        MIB / 2,
        MIB,
        MIB,
        MIB,
        MIB,
        MIB / 2,
        7 * MIB,
        MIB,
        MIB,
        MIB,
        MIB,
        MIB,
        MIB,
        333,
    ];
    let total: usize = sizes.iter().sum();
    let data = random_bytes(total, unique_seed());
    let location = clients[0].start_upload("alternating").await;
    let mut at = 0;
    for (i, len) in sizes.into_iter().enumerate() {
        clients[i % 2]
            .patch_chunk(&location, &data, at..at + len)
            .await
            .expect(202, None);
        at += len;
    }
    assert_eq!(clients[1].upload_offset(&location).await, total);
    // Completed on the process that did not take the last chunk, right after it. Both
    // processes may promote staged bytes from the same offset at once; the store records one,
    // and a completion waiting on the other is answered 503 "retry the request", which clients
    // do: one retry, then the blob is whole.
    let completer = &clients[sizes.len() % 2];
    let digest = sha256(&data);
    let mut answer = completer.close_upload(&location, &digest).await;
    if answer.status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
        assert_eq!(answer.error_code(), "UNAVAILABLE");
        tokio::time::sleep(Duration::from_millis(200)).await;
        answer = completer.close_upload(&location, &digest).await;
    }
    answer.expect(201, None);
    let got = completer
        .get_following(&format!("/v2/alternating/blobs/{digest}"))
        .await;
    assert!(got.body[..] == data[..], "the blob reads back as sent");

    // The same chunks all on one process, completed on it: bytes staged there are not read
    // back, and the blob is the same.
    let location = clients[0].start_upload("one-process").await;
    let mut at = 0;
    for len in sizes {
        clients[0]
            .patch_chunk(&location, &data, at..at + len)
            .await
            .expect(202, None);
        at += len;
    }
    clients[0]
        .commit_upload("one-process", &location, &data)
        .await;
}

crate::harness::trials! {
    one_gib_upload_keeps_server_memory_bounded.needs(Persistence);
    chunks_of_every_size_assemble_into_the_right_blob;
    two_processes_take_alternate_patches_of_one_upload.needs(SharedState);
    process_killed_mid_patch_and_the_client_resumes_on_another.needs(SharedState);
    presigned_redirects_work_with_plain_curl_and_expire.needs(S3);
    streaming_through_berth_honours_range_when_redirects_are_off.needs(S3);
    expired_uploads_leave_no_objects_or_multipart_uploads_in_s3.needs(S3);
    completed_uploads_leave_no_staging_or_stray_multipart_uploads.needs(S3);
    database_unreachable_answers_503_then_recovers_without_restart.multi_thread(2).needs(Postgres);
    filesystem_store_without_direct_io.needs(Sqlite);
    a_tag_pushed_on_one_process_is_served_by_every_other_at_once.needs(SharedState);
    small_s3_chunks_are_answered_before_their_part_lands_and_survive_a_kill.multi_thread(2).needs(S3);
    small_s3_chunks_alternating_between_processes_make_one_intact_blob.needs(S3);
}
