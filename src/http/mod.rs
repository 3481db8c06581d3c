//! The HTTP face of the registry: the distribution API under `/v2`, health probes, and the
//! server loop with graceful shutdown.
//!
//! Only this module knows axum and the OCI error envelope's wire form.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};

use crate::error::RegistryError;
use crate::registry::Registry;

mod api;
mod body_rate;
pub mod endpoint;
mod handlers;
pub mod headers;
pub mod observe;
mod server;
#[cfg(feature = "auth")]
mod token;

pub use api::{API_VERSION, Api, BlobLocationHook, HttpOptions, UploadLocationHook};
pub use endpoint::{Action, Operation, Route, RouteError, route};
pub use observe::{RequestId, observed};
pub use server::{ServeOptions, serve, serve_with};
#[cfg(feature = "auth")]
pub use token::token_router;

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

/// The distribution API (`/v2/**`) over `registry`, open to everyone, with default options
/// ([`Api`] sets them).
pub fn router(registry: Registry) -> Router {
    Api::new(registry).router()
}

/// Liveness (`/healthz`) and readiness (`/readyz`: metadata and blob store reachable).
pub fn health_router(registry: Registry) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readiness))
        .with_state(registry)
}

/// How long readiness waits for each dependency: a probe must answer promptly even when a
/// dependency hangs.
const READINESS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// `check`'s outcome, or why it took too long.
async fn within(
    what: &'static str,
    check: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), String> {
    match tokio::time::timeout(READINESS_TIMEOUT, check).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{what} did not answer within {} ms",
            READINESS_TIMEOUT.as_millis()
        )),
    }
}

/// Ready when the metadata database and blob storage answer within [`READINESS_TIMEOUT`].
/// Low disk space does not make a process unready (reads still work, and a replica taken out
/// of rotation would not free any space); the answer says so, and the uploads it would refuse
/// get 507.
async fn readiness(State(registry): State<Registry>) -> Response {
    if registry.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        )
            .into_response();
    }
    let metadata = within("the metadata database", async {
        registry
            .metadata_store()
            .ping()
            .await
            .map_err(|e| e.to_string())
    });
    let blobs = within("blob storage", async {
        registry
            .blob_store()
            .check()
            .await
            .map_err(|e| e.to_string())
    });
    let (metadata, blobs) = tokio::join!(metadata, blobs);
    let problems: Vec<String> = [metadata, blobs]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    if !problems.is_empty() {
        tracing::warn!(problems = ?problems, "not ready");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join("; ")),
        )
            .into_response();
    }
    match tokio::time::timeout(READINESS_TIMEOUT, registry.storage_pressure()).await {
        Ok(Some(pressure)) => {
            (StatusCode::OK, format!("ready (degraded: {pressure})\n")).into_response()
        }
        _ => (StatusCode::OK, "ready\n").into_response(),
    }
}
