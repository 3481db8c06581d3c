//! The HTTP face of the registry: the distribution API under `/v2`, health probes, and the
//! server loop with graceful shutdown.
//!
//! Only this module knows axum and the OCI error envelope's wire form.

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use http::{HeaderValue, StatusCode, header};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::error::RegistryError;
use crate::registry::Registry;

mod body_rate;
pub mod endpoint;
mod handlers;
pub mod headers;
mod server;
#[cfg(feature = "auth")]
mod token;

pub use endpoint::{Action, Operation, Route, RouteError, route};
pub use server::{ServeOptions, peer_address, serve, serve_with};
#[cfg(feature = "auth")]
pub use token::token_router;

/// `Docker-Distribution-API-Version`, sent on every API response.
pub const API_VERSION: &str = "registry/2.0";

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::error!(status = self.status().as_u16(), code = self.code(), cause = ?self.cause(), "request failed");
        }
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in self.headers() {
            headers.append(name.clone(), value.clone());
        }
        response
    }
}

/// The distribution API (`/v2/**`) over `registry`.
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route("/v2", any(dispatch))
        .route("/v2/", any(dispatch))
        .route("/v2/{*rest}", any(dispatch))
        .with_state(registry)
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    tracing::info_span!("request", method = %request.method(), uri = %request.uri())
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
}

/// Liveness (`/healthz`) and readiness (`/readyz`: metadata and blob store reachable).
pub fn health_router(registry: Registry) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readiness))
        .with_state(registry)
}

async fn readiness(State(registry): State<Registry>) -> Response {
    let metadata = registry.metadata_store().ping().await;
    let blobs = registry.blob_store().check().await;
    match (metadata, blobs) {
        (Ok(()), Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        (m, b) => {
            let mut problems = Vec::new();
            if let Err(e) = m {
                problems.push(e.to_string());
            }
            if let Err(e) = b {
                problems.push(e.to_string());
            }
            tracing::warn!(problems = ?problems, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", problems.join("; ")),
            )
                .into_response()
        }
    }
}

async fn dispatch(State(registry): State<Registry>, request: Request) -> Response {
    let mut response = handlers::handle(registry, request).await;
    response.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static(API_VERSION),
    );
    response
}
