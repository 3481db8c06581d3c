//! Crashes, restarts, races and expiry: data stays consistent and uploads resumable.

use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;

use crate::util::*;

/// A request body that sends `data` in 64 KiB pieces, pausing `pause` after `pause_after`
/// bytes (to hold a request open while something else happens).
fn slow_body(data: Vec<u8>, pause_after: usize, pause: Duration) -> reqwest::Body {
    let stream = futures::stream::iter(
        data.chunks(64 * 1024)
            .map(|c| c.to_vec())
            .collect::<Vec<_>>()
            .into_iter()
            .scan(0usize, |sent, chunk| {
                let before = *sent;
                *sent += chunk.len();
                Some((before, chunk))
            }),
    )
    .then(move |(before, chunk)| async move {
        if before < pause_after && before + chunk.len() >= pause_after {
            tokio::time::sleep(pause).await;
        }
        Ok::<_, std::io::Error>(chunk)
    });
    reqwest::Body::wrap_stream(stream)
}

async fn chunked_upload_resumes_after_the_server_is_killed_and_restarted() {
    let mut server = Server::start();
    let c = server.client();
    let data = random_bytes(7 * 1024 * 1024 + 4321, unique_seed());
    let location = c.start_upload("resume/me").await;
    let first = 3 * 1024 * 1024 + 5;
    let a = c.patch_chunk(&location, &data, 0..first).await;
    a.expect(202, None);

    server.restart();
    let c = server.client();
    assert_eq!(c.upload_offset(&location).await, first);
    c.complete_upload("resume/me", &location, &data, first)
        .await;
}

async fn upload_killed_mid_patch_resumes_from_the_reported_range() {
    let mut server = Server::start();
    let c = server.client();
    let data = random_bytes(40 * 1024 * 1024 + 99, unique_seed());
    let location = c.start_upload("killed").await;
    // Stream 40 MiB, stalling after 35 MiB: by then at least two 16 MiB parts are durable.
    let request = c.request(Method::PATCH, &location).body(slow_body(
        data.clone(),
        35 * 1024 * 1024,
        Duration::from_secs(30),
    ));
    let pending = tokio::spawn(request.send());
    let probe = c.clone();
    let loc = location.clone();
    eventually("two parts recorded", Duration::from_secs(60), async || {
        probe.upload_offset(&loc).await >= 32 * 1024 * 1024
    })
    .await;
    server.kill();
    let _ = pending.await;
    server.restart();
    let c = server.client();
    let held = c.upload_offset(&location).await;
    assert!(
        held >= 32 * 1024 * 1024 && held <= data.len(),
        "held {held}"
    );
    c.complete_upload("killed", &location, &data, held).await;
}

async fn client_disconnect_keeps_what_arrived() {
    let server = Server::start();
    let c = server.client();
    let data = random_bytes(3 * 1024 * 1024, unique_seed());
    let location = c.start_upload("hangup").await;
    // The client sends 2 MiB then drops the connection.
    let request = c.request(Method::PATCH, &location).body(slow_body(
        data.clone(),
        2 * 1024 * 1024,
        Duration::from_secs(60),
    ));
    let pending = tokio::spawn(request.send());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pending.abort();
    let probe = c.clone();
    eventually(
        "the session to settle",
        Duration::from_secs(20),
        async || {
            let s = probe.get(&location).await;
            s.status.as_u16() == 204 && s.header("range") != Some("0-0")
        },
    )
    .await;
    let held = c.upload_offset(&location).await;
    assert!(held <= 2 * 1024 * 1024 + 64 * 1024, "held {held}");
    c.complete_upload("hangup", &location, &data, held).await;
}

async fn racing_requests_on_one_session_leave_the_winner_intact() {
    let server = Server::start();
    let c = server.client();
    let location = c.start_upload("race").await;
    let winner = random_bytes(6 * 1024 * 1024, unique_seed());
    let loser = random_bytes(6 * 1024 * 1024, unique_seed() + 7);
    // The first request holds the session while streaming slowly; the second races it.
    let slow = c
        .request(Method::PATCH, &location)
        .header("content-range", format!("0-{}", winner.len() - 1))
        .body(slow_body(
            winner.clone(),
            1024 * 1024,
            Duration::from_secs(2),
        ));
    let first = tokio::spawn(slow.send());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = c
        .send(
            c.request(Method::PATCH, &location)
                .header("content-range", format!("0-{}", loser.len() - 1))
                .body(loser.clone()),
        )
        .await;
    let first = first.await.unwrap().unwrap();
    let statuses = [first.status().as_u16(), second.status.as_u16()];
    assert!(
        statuses.contains(&202) && statuses.contains(&416),
        "one wins, one gets 416: {statuses:?}"
    );
    let kept = if first.status().as_u16() == 202 {
        &winner
    } else {
        &loser
    };
    let status = c.get(&location).await;
    assert_eq!(
        status.header("range"),
        Some(format!("0-{}", kept.len() - 1).as_str())
    );
    c.close_upload(&location, &sha256(kept))
        .await
        .expect(201, None);
    let got = c
        .get_following(&format!("/v2/race/blobs/{}", sha256(kept)))
        .await;
    assert!(
        got.body[..] == kept[..],
        "the blob holds exactly the winner's bytes"
    );
}

async fn concurrent_uploads_of_the_same_blob() {
    let server = Server::start();
    let c = server.client();
    let data = random_bytes(5 * 1024 * 1024 + 1, unique_seed());
    let digest = sha256(&data);
    let pushes = (0..4).map(|i| {
        let c = c.clone();
        let data = data.clone();
        let repo = if i % 2 == 0 { "same/a" } else { "same/b" };
        async move { (repo, c.push_blob(repo, &data).await) }
    });
    for (repo, d) in futures::future::join_all(pushes).await {
        assert_eq!(d, digest);
        let got = c.get_following(&format!("/v2/{repo}/blobs/{digest}")).await;
        assert!(got.body[..] == data[..]);
    }
}

async fn concurrent_pushes_of_the_same_tag() {
    let server = Server::start();
    let c = server.client();
    let mut images = Vec::new();
    for i in 0..6 {
        images.push(
            c.push_image("tagrace", &format!("seed{i}"), unique_seed() + i)
                .await,
        );
    }
    let pushes = images.iter().map(|img| {
        let c = c.clone();
        let body = img.manifest.clone();
        async move {
            c.put_manifest("tagrace", "latest", OCI_MANIFEST, &body)
                .await
                .status
                .as_u16()
        }
    });
    let statuses = futures::future::join_all(pushes).await;
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    let got = c.get("/v2/tagrace/manifests/latest").await;
    got.expect(200, None);
    let digest = got.header("docker-content-digest").unwrap().to_owned();
    assert!(
        images
            .iter()
            .any(|i| i.digest == digest && i.manifest[..] == got.body[..])
    );
    let tags = c.get("/v2/tagrace/tags/list").await;
    assert_eq!(
        tags.json()["tags"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| *t == "latest")
            .count(),
        1
    );
}

async fn abandoned_uploads_expire_and_their_bytes_are_removed() {
    let server = Server::start_with(&[
        ("BERTH_UPLOAD_TTL", "1s"),
        ("BERTH_MAINTENANCE_INTERVAL", "200ms"),
    ]);
    let c = server.client();
    let location = c.start_upload("expire").await;
    c.send(
        c.request(Method::PATCH, &location)
            .body(random_bytes(100_000, 1)),
    )
    .await
    .expect(202, None);
    let probe = c.clone();
    eventually(
        "the session to expire",
        Duration::from_secs(20),
        async || probe.get(&location).await.status.as_u16() == 404,
    )
    .await;
    c.get(&location)
        .await
        .expect(404, Some("BLOB_UPLOAD_UNKNOWN"));
    if matches!(
        server.deployment.backend,
        Backend::Sqlite | Backend::Postgres
    ) {
        let blobs = server.deployment.data_dir().join("blobs");
        eventually(
            "the bytes to be removed",
            Duration::from_secs(20),
            async || files_under(&blobs).is_empty(),
        )
        .await;
    }
    // Completed blobs are not touched by expiry.
    let digest = c.push_blob("expire", b"keep me").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        &c.get_following(&format!("/v2/expire/blobs/{digest}"))
            .await
            .body[..],
        b"keep me"
    );
}

async fn graceful_shutdown_finishes_in_flight_requests() {
    let mut server = Server::start();
    let c = server.client();
    let data = random_bytes(2 * 1024 * 1024, unique_seed());
    let digest = sha256(&data);
    let location = c.start_upload("graceful").await;
    let request = c
        .request(Method::PUT, &location)
        .query(&[("digest", &digest)])
        .body(slow_body(data.clone(), 1024 * 1024, Duration::from_secs(2)));
    let pending = tokio::spawn(request.send());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, took) = tokio::task::spawn_blocking(move || {
        let r = server.terminate();
        (r, server)
    })
    .await
    .map(|(r, _server)| r)
    .unwrap();
    let response = pending
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(response.status().as_u16(), 201);
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took < Duration::from_secs(12),
        "stopped within the grace period ({took:?})"
    );
}

crate::harness::trials! {
    chunked_upload_resumes_after_the_server_is_killed_and_restarted.needs(Persistence);
    upload_killed_mid_patch_resumes_from_the_reported_range.needs(Persistence);
    client_disconnect_keeps_what_arrived;
    racing_requests_on_one_session_leave_the_winner_intact;
    concurrent_uploads_of_the_same_blob;
    concurrent_pushes_of_the_same_tag;
    abandoned_uploads_expire_and_their_bytes_are_removed;
    graceful_shutdown_finishes_in_flight_requests;
}
