//! Operations: the Prometheus metrics on the admin listener follow the traffic, and the access
//! log has one line per request with its client, operation, status, bytes and request id.

use std::time::Duration;

use reqwest::Method;

use crate::util::*;

/// A server with an admin listener, and a client for that listener.
pub(crate) fn observed_server(extra: &[(&str, &str)]) -> (Server, Client) {
    let admin = format!("127.0.0.1:{}", free_port());
    let mut settings = vec![("BERTH_ADMIN_LISTEN", admin.as_str())];
    settings.extend_from_slice(extra);
    let server = Server::start_with(&settings);
    (server, Client::new(&format!("http://{admin}")))
}

fn grew(before: &str, after: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(after, name, labels) - metric_sum(before, name, labels)
}

async fn metrics_follow_the_traffic() {
    let backend = Backend::current();
    let (server, admin) = observed_server(&[
        ("BERTH_MAINTENANCE_INTERVAL", "500ms"),
        ("BERTH_REDIRECT", "false"),
    ]);
    let c = server.client();
    let before = scrape(&admin).await;
    assert!(
        before.contains("# HELP berth_part_buffers "),
        "metrics are described"
    );
    assert!(metric_sum(&before, "berth_part_buffers", &[]) >= 1.0);

    let image = c.push_image("metrics/app", "v1", unique_seed()).await;
    let layer = c
        .get(&format!("/v2/metrics/app/blobs/{}", sha256(&image.layer)))
        .await;
    layer.expect(200, None);
    c.get("/v2/metrics/app/manifests/v1")
        .await
        .expect(200, None);
    c.get("/v2/metrics/app/manifests/missing")
        .await
        .expect(404, Some("MANIFEST_UNKNOWN"));
    let after = scrape(&admin).await;

    let requests = "berth_http_requests_total";
    assert_eq!(
        grew(
            &before,
            &after,
            requests,
            &[("operation", "put_manifest"), ("status", "201")]
        ),
        1.0
    );
    assert_eq!(
        grew(
            &before,
            &after,
            requests,
            &[("operation", "get_manifest"), ("status", "404")]
        ),
        1.0
    );
    assert!(
        grew(
            &before,
            &after,
            requests,
            &[("operation", "get_blob"), ("status", "200")]
        ) >= 1.0
    );
    assert!(
        grew(
            &before,
            &after,
            "berth_http_request_duration_seconds_count",
            &[("operation", "get_manifest")]
        ) >= 2.0
    );
    let pushed = (image.layer.len() + image.config.len() + image.manifest.len()) as f64;
    let received = grew(&before, &after, "berth_http_received_bytes_total", &[]);
    assert!(
        received >= pushed,
        "{received} bytes received, {pushed} pushed"
    );
    let sent = grew(
        &before,
        &after,
        "berth_http_sent_bytes_total",
        &[("operation", "get_blob")],
    );
    assert!(
        sent >= image.layer.len() as f64,
        "{sent} bytes of blobs sent"
    );
    assert!(
        grew(
            &before,
            &after,
            "berth_metadata_operation_duration_seconds_count",
            &[("operation", "put_manifest")]
        ) >= 1.0,
        "metadata calls are timed"
    );
    if backend.uses_s3() {
        for operation in ["PutObject", "GetObject"] {
            assert!(
                grew(
                    &before,
                    &after,
                    "berth_s3_request_duration_seconds_count",
                    &[("operation", operation)]
                ) >= 1.0,
                "S3 {operation} calls are timed"
            );
        }
    }
    if backend.persistent() {
        let max = metric_sum(&after, "berth_db_pool_max_connections", &[]);
        let open = metric_sum(&after, "berth_db_pool_connections", &[]);
        assert!(
            max >= 1.0 && open >= 1.0 && open <= max,
            "pool {open}/{max}"
        );
    }

    // An upload in progress holds a session, a part buffer (while bytes keep coming) and a
    // request in flight.
    let location = c.start_upload("metrics/app").await;
    let mut trickle = RawConnection::open(server.addr).await;
    trickle.start_chunked("PATCH", &location).await.unwrap();
    let mut seen = false;
    for _ in 0..100 {
        trickle.chunk(&random_bytes(1024, 1)).await.unwrap();
        let now = scrape(&admin).await;
        if metric_sum(&now, "berth_upload_sessions", &[]) >= 1.0
            && metric_sum(&now, "berth_part_buffers_in_use", &[]) >= 1.0
            && metric_sum(&now, "berth_http_requests_in_flight", &[]) >= 1.0
        {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "the upload in progress shows in the gauges");
    trickle.send(b"0\r\n\r\n").await.unwrap();
    let answer = trickle.response(Duration::from_secs(10)).await.unwrap();
    assert_eq!(answer.status, 202);
    eventually("the buffer is back", Duration::from_secs(10), async || {
        metric_sum(&scrape(&admin).await, "berth_part_buffers_in_use", &[]) == 0.0
    })
    .await;
    c.call(Method::DELETE, &location).await.expect(204, None);

    // Maintenance runs on its interval and says what it removed.
    eventually("maintenance runs", Duration::from_secs(10), async || {
        let now = scrape(&admin).await;
        grew(
            &before,
            &now,
            "berth_maintenance_runs_total",
            &[("outcome", "ok")],
        ) >= 2.0
    })
    .await;
    assert!(after.contains("berth_maintenance_removed_total{what=\"expired_uploads\"}"));
}

async fn s3_errors_are_counted() {
    let s3 = FullS3::start(s3_server().endpoint).await;
    let (server, admin) = observed_server(&[("BERTH_S3_ENDPOINT", s3.endpoint.as_str())]);
    let c = server.client();
    let before = scrape(&admin).await;
    s3.set_full(true);
    let data = random_bytes(1 << 20, unique_seed());
    c.send(
        c.request(Method::POST, "/v2/s3errors/app/blobs/uploads/")
            .query(&[("digest", sha256(&data))])
            .body(data),
    )
    .await
    .expect(507, None);
    let after = scrape(&admin).await;
    let errors = grew(
        &before,
        &after,
        "berth_s3_request_errors_total",
        &[("status", "507")],
    );
    assert!(errors >= 1.0, "{errors} S3 errors counted");
}

/// The JSON access-log line of the request with id `id`.
fn access_line(server: &Server, id: &str) -> Option<serde_json::Value> {
    server
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["target"] == "berth::access" && v["request_id"] == id)
}

async fn logged(server: &Server, id: &str) -> serde_json::Value {
    let mut line = None;
    eventually(
        "the access log line is written",
        Duration::from_secs(10),
        async || {
            line = access_line(server, id);
            line.is_some()
        },
    )
    .await;
    line.unwrap()
}

async fn the_access_log_has_a_json_line_per_request() {
    let server = Server::start_with(&[("BERTH_LOG_FORMAT", "json"), ("BERTH_REDIRECT", "false")]);
    let c = server.client();
    let data = random_bytes(300_000, unique_seed());
    let digest = sha256(&data);
    // X-Forwarded-For and X-Request-Id from a client that is no trusted proxy are ignored.
    let push = c
        .send(
            c.request(Method::POST, "/v2/logged/app/blobs/uploads/")
                .query(&[("digest", &digest)])
                .header("x-forwarded-for", "203.0.113.9")
                .header("x-request-id", "chosen-by-client")
                .header("user-agent", "access-log-test/1.0")
                .body(data.clone()),
        )
        .await;
    push.expect(201, None);
    let id = push
        .header("x-request-id")
        .expect("a request id")
        .to_owned();
    assert_ne!(id, "chosen-by-client");
    let line = logged(&server, &id).await;
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["operation"], "start_upload");
    assert_eq!(line["repository"], "logged/app");
    assert_eq!(line["status"], 201);
    assert_eq!(line["bytes_in"], data.len() as u64);
    assert_eq!(line["user_agent"], "access-log-test/1.0");
    assert_eq!(line["user"], "-");
    assert_eq!(line["complete"], true);
    assert!(line["duration_ms"].as_f64().is_some());

    let pull = c.get(&format!("/v2/logged/app/blobs/{digest}")).await;
    pull.expect(200, None);
    let line = logged(&server, pull.header("x-request-id").unwrap()).await;
    assert_eq!(line["operation"], "get_blob");
    assert_eq!(line["reference"], digest.as_str());
    assert_eq!(line["bytes_out"], data.len() as u64);
    assert_eq!(line["complete"], true);

    // Each request has its own id, also on errors.
    let missing = c.get("/v2/logged/app/manifests/nothing").await;
    missing.expect(404, Some("MANIFEST_UNKNOWN"));
    let missing_id = missing.header("x-request-id").unwrap();
    assert_ne!(missing_id, id);
    assert_eq!(logged(&server, missing_id).await["status"], 404);

    // A client that hangs up mid-download: the line says the answer was cut short.
    let big = random_bytes(32 << 20, unique_seed());
    let big_digest = c.push_blob("logged/app", &big).await;
    let mut quitter = RawConnection::open(server.addr).await;
    quitter
        .send(
            format!(
                "GET /v2/logged/app/blobs/{big_digest} HTTP/1.1\r\nHost: berth\r\nX-Request-Id: ignored\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let head = quitter.response(Duration::from_secs(10)).await.unwrap();
    assert_eq!(head.status, 200);
    let quitter_id = head.header("x-request-id").unwrap().to_owned();
    drop(quitter);
    let line = logged(&server, &quitter_id).await;
    assert_eq!(line["complete"], false);
    assert!(line["bytes_out"].as_u64().unwrap() < big.len() as u64);
}

async fn forwarded_for_and_request_ids_are_believed_from_trusted_proxies_only() {
    let server = Server::start_with(&[
        ("BERTH_LOG_FORMAT", "json"),
        ("BERTH_TRUSTED_PROXIES", "127.0.0.0/8, ::1"),
    ]);
    let c = server.client();
    let a = c
        .send(
            c.request(Method::GET, "/v2/")
                .header("x-forwarded-for", "198.51.100.4, 203.0.113.9")
                .header("x-request-id", "lb-7f3a9c"),
        )
        .await;
    a.expect(200, None);
    // The load balancer's id is kept, so that its logs and Berth's can be joined.
    assert_eq!(a.header("x-request-id"), Some("lb-7f3a9c"));
    let line = logged(&server, "lb-7f3a9c").await;
    // The nearest untrusted hop is the client.
    assert_eq!(line["client"], "203.0.113.9");
    assert_eq!(line["operation"], "api_version");

    // An id that cannot be logged safely is replaced.
    let a = c
        .send(
            c.request(Method::GET, "/v2/")
                .header("x-request-id", "two words"),
        )
        .await;
    assert_ne!(a.header("x-request-id"), Some("two words"));
}

fn an_invalid_trusted_proxy_is_refused_at_start() {
    let output = std::process::Command::new(binary())
        .env("BERTH_TRUSTED_PROXIES", "10.0.0.0/8, not-a-network")
        .env("BERTH_STORAGE", "memory")
        .env("BERTH_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not-a-network"), "{stderr}");
}

crate::harness::trials! {
    metrics_follow_the_traffic;
    s3_errors_are_counted.needs(S3);
    the_access_log_has_a_json_line_per_request;
    forwarded_for_and_request_ids_are_believed_from_trusted_proxies_only;
    an_invalid_trusted_proxy_is_refused_at_start;
}
