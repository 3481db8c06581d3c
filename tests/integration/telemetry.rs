//! OpenTelemetry: with an OTLP endpoint configured, request spans reach a collector.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;

use crate::util::*;

type Received = Arc<Mutex<Vec<(String, Bytes)>>>;

/// A minimal OTLP/HTTP collector that keeps what it is sent.
async fn collector() -> (String, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                sink.lock().unwrap().push((content_type, body));
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), received)
}

// Multi-threaded: the collector must answer while the test thread waits on the server.
async fn request_spans_are_exported_over_otlp() {
    let (endpoint, received) = collector().await;
    let server = Server::start_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    let c = server.client();
    c.get("/v2/").await.expect(200, None);
    c.push_blob("traced", b"spans please").await;
    eventually(
        "spans at the collector",
        Duration::from_secs(20),
        async || {
            received
                .lock()
                .unwrap()
                .iter()
                .any(|(_, body)| body.windows(7).any(|w| w == b"request"))
        },
    )
    .await;
    let batches = received.lock().unwrap();
    assert!(
        batches.iter().all(|(ct, _)| ct == "application/x-protobuf"),
        "OTLP/HTTP protobuf"
    );
    assert!(
        batches
            .iter()
            .any(|(_, body)| body.windows(5).any(|w| w == b"berth")),
        "spans carry the service name"
    );
}

crate::harness::trials! {
    request_spans_are_exported_over_otlp.multi_thread(2);
}
