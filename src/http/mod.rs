//! The HTTP face of the registry: the distribution API under `/v2`, health probes, and the
//! server loop with graceful shutdown.
//!
//! Only this module knows axum, HTTP statuses and headers, and the OCI error envelope's wire
//! form.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;

use crate::registry::{Readiness, Registry};

mod api;
mod body_rate;
pub mod endpoint;
pub mod error;
mod handlers;
pub mod headers;
pub mod observe;
#[cfg(feature = "mirror")]
mod relay;
mod server;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "auth")]
mod token;

pub use api::{API_VERSION, Api, BlobLocationHook, HttpOptions, UploadLocationHook};
pub use endpoint::{Action, Operation, Route, RouteError, Target, TargetError, route};
pub use error::{ApiError, ApiResult};
pub use handlers::event_origin;
pub use observe::{RequestId, observed};
#[cfg(feature = "mirror")]
pub use relay::relay_router;
#[cfg(feature = "tls")]
pub use server::serve_tls;
pub use server::{ServeOptions, serve, serve_with};
#[cfg(feature = "tls")]
pub use tls::{ServerTls, TlsError, TlsFiles};
#[cfg(feature = "auth")]
pub use token::token_router;

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

/// Ready when the registry's stores answer in time ([`Registry::readiness`]).
async fn readiness(State(registry): State<Registry>) -> Response {
    match registry.readiness().await {
        Readiness::Draining => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        )
            .into_response(),
        Readiness::Unready(problems) => {
            tracing::warn!(problems = ?problems, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", problems.join("; ")),
            )
                .into_response()
        }
        Readiness::Degraded(pressure) => {
            (StatusCode::OK, format!("ready (degraded: {pressure})\n")).into_response()
        }
        Readiness::Ready => (StatusCode::OK, "ready\n").into_response(),
    }
}
