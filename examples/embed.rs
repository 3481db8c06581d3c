//! Berth inside an existing axum application, behind the application's own authentication.
//!
//! ```text
//! cargo run --example embed              # serve on 127.0.0.1:5050 until Ctrl-C
//! cargo run --example embed -- --demo    # serve on a free port, push and pull a blob, exit
//! ```
//!
//! The application keeps its own routes (`/`), mounts Berth's `/v2` API behind a bearer-token
//! layer, and exposes Berth's health probes without authentication.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use berth::Registry;
use berth::metadata::memory::MemoryMetadataStore;
use berth::storage::memory::MemoryBlobStore;
use futures::future::BoxFuture;
use http::{HeaderValue, Request, Response, StatusCode, header};
use tower::{Layer, Service};

/// Lets a request through only with `Authorization: Bearer <token>`; otherwise answers 401 with
/// the OCI error envelope and a `WWW-Authenticate` challenge, as registries do.
#[derive(Clone)]
struct BearerAuthLayer {
    token: Arc<str>,
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BearerAuth {
            inner,
            token: Arc::clone(&self.token),
        }
    }
}

#[derive(Clone)]
struct BearerAuth<S> {
    inner: S,
    token: Arc<str>,
}

impl<S> Service<Request<Body>> for BearerAuth<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let expected = format!("Bearer {}", self.token);
        let authorized = request
            .headers()
            .get(header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == expected.as_bytes());
        if authorized {
            let future = self.inner.call(request);
            return Box::pin(future);
        }
        Box::pin(async move {
            let body =
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"a bearer token is required"}]}"#;
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"example\""),
            );
            Ok(response)
        })
    }
}

fn app(registry: Registry, token: &str) -> Router {
    let registry_api = berth::http::router(registry.clone()).layer(BearerAuthLayer {
        token: token.into(),
    });
    Router::new()
        .route(
            "/",
            get(|| async { "my service, with a registry under /v2\n" }),
        )
        .merge(registry_api)
        .merge(berth::http::health_router(registry))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let demo = std::env::args().any(|a| a == "--demo");
    // A throwaway registry in memory; use the SQL and S3 stores for real data.
    let registry = Registry::builder(
        Arc::new(MemoryBlobStore::new(8 << 20)),
        Arc::new(MemoryMetadataStore::new()),
    )
    .upload_buffers(4)
    .build();
    let token = "s3cret-token";
    let listener = tokio::net::TcpListener::bind(if demo {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:5050"
    })
    .await?;
    let addr = listener.local_addr()?;
    println!("serving on http://{addr} (token: {token})");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let server = tokio::spawn(berth::http::serve(
        listener,
        app(registry, token),
        shutdown,
        Duration::from_secs(5),
    ));
    if !demo {
        server.await??;
        return Ok(());
    }

    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let refused = client.get(format!("{base}/v2/")).send().await?;
    assert_eq!(refused.status(), 401);
    println!("GET /v2/ without a token: {}", refused.status());

    let blob = b"hello from an embedded registry";
    let digest = berth::oci::DigestAlgorithm::Sha256.digest(blob);
    let pushed = client
        .post(format!("{base}/v2/demo/app/blobs/uploads/?digest={digest}"))
        .bearer_auth(token)
        .body(&blob[..])
        .send()
        .await?;
    assert_eq!(pushed.status(), 201);
    println!("pushed {digest}: {}", pushed.status());

    let pulled = client
        .get(format!("{base}/v2/demo/app/blobs/{digest}"))
        .bearer_auth(token)
        .send()
        .await?;
    assert_eq!(pulled.status(), 200);
    assert_eq!(&pulled.bytes().await?[..], blob);
    println!("pulled it back byte-identical");

    let health = client.get(format!("{base}/readyz")).send().await?;
    assert_eq!(health.status(), 200);
    println!("readiness without a token: {}", health.status());
    Ok(())
}
