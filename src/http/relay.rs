//! The route other replicas follow this process's upstream fetches through (feature
//! `mirror`): `GET /_berth/mirror-fetches/DIGEST` with the fetch's claim owner in a header.
//! The owner is a random id that only the metadata store and this process know, so the route
//! hands out nothing a client of the registry could ask for; it answers 404 for anything but
//! a fetch running here.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, StatusCode, header};

use crate::oci::Digest;
use crate::registry::Registry;
use crate::registry::mirror::{RELAY_OWNER_HEADER, RELAY_PATH};

/// The relay route, open to the network like the API (see the module's note on why that is
/// safe); merge it into the served router.
pub fn relay_router(registry: Registry) -> Router {
    Router::new()
        .route(&format!("{RELAY_PATH}{{digest}}"), get(relay))
        .with_state(registry)
}

async fn relay(
    State(registry): State<Registry>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Response {
    let owner = headers
        .get(RELAY_OWNER_HEADER)
        .and_then(|v| v.to_str().ok());
    let running = match (Digest::parse(&digest), owner) {
        (Ok(digest), Some(owner)) => registry.relay_mirror_fetch(&digest, owner),
        _ => None,
    };
    let Some((size, body)) = running else {
        return (StatusCode::NOT_FOUND, "no such fetch runs here\n").into_response();
    };
    let mut response = Response::new(Body::from_stream(body));
    if let Some(size) = size {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, header::HeaderValue::from(size));
    }
    response
}
