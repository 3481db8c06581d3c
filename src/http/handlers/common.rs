//! What every operation's handler shares: the call it serves and the pieces of its answers.

use axum::body::Body;
use axum::response::Response;
use futures::StreamExt;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use std::sync::Arc;

use crate::auth::Grant;
use crate::error::{ErrorCode, RegistryError, RegistryResult};
use crate::http::Api;
use crate::http::body_rate::MinRate;
use crate::http::endpoint::Route;
use crate::metadata::{BlobRecord, UploadSession};
use crate::oci::{Digest, RepositoryName};
use crate::registry::Registry;
use crate::registry::uploads::{BodyStream, upload_range};

pub(super) struct Call {
    pub(super) api: Arc<Api>,
    pub(super) registry: Registry,
    pub(super) parts: Parts,
    pub(super) route: Route,
    /// The repository the path names, parsed once (none for the catalog and `/v2/`).
    pub(super) name: Option<RepositoryName>,
    pub(super) query: Vec<(String, String)>,
    /// What the caller may do, as the registry's authorizer decided.
    pub(super) grant: Arc<dyn Grant>,
}

pub(super) fn value(s: &str) -> RegistryResult<HeaderValue> {
    HeaderValue::from_str(s)
        .map_err(|e| RegistryError::internal(format!("header value {s:?}: {e}")))
}

pub(super) fn response(
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Body,
) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let map = r.headers_mut();
    for (k, v) in headers {
        map.insert(k, v);
    }
    r
}

pub(super) fn empty(status: StatusCode, mut headers: Vec<(HeaderName, HeaderValue)>) -> Response {
    headers.push((header::CONTENT_LENGTH, HeaderValue::from_static("0")));
    response(status, headers, Body::empty())
}

pub(super) fn json(
    status: StatusCode,
    content_type: &'static str,
    body: &impl serde::Serialize,
) -> RegistryResult<Response> {
    let bytes = serde_json::to_vec(body).map_err(RegistryError::internal)?;
    Ok(response(
        status,
        vec![
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_LENGTH, HeaderValue::from(bytes.len())),
        ],
        Body::from(bytes),
    ))
}

pub(super) fn docker_content_digest() -> HeaderName {
    HeaderName::from_static("docker-content-digest")
}

/// The repository the call names, parsed when it was routed.
pub(super) fn repository(call: &Call) -> RegistryResult<RepositoryName> {
    call.name
        .clone()
        .ok_or_else(|| RegistryError::internal("an operation without a repository asked for one"))
}

pub(super) fn target_digest(call: &Call) -> RegistryResult<Digest> {
    Ok(Digest::parse(&call.route.target)?)
}

pub(super) fn content_length(headers: &HeaderMap) -> RegistryResult<Option<u64>> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    RegistryError::new(ErrorCode::SizeInvalid, "Content-Length is not a number")
                })
        })
        .transpose()
}

/// A request body as a stream of bytes, ended if the client sends slower than the
/// registry's minimum body rate.
pub(super) fn body_stream(api: &Api, body: Body) -> BodyStream {
    let options = &api.options;
    let stream = body
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other));
    MinRate::new(stream, options.body_min_rate, options.body_rate_window).boxed()
}

pub(super) fn blob_location(name: &RepositoryName, digest: &Digest) -> String {
    format!("/v2/{name}/blobs/{digest}")
}

pub(super) fn upload_location(api: &Api, name: &RepositoryName, id: &str) -> String {
    match &api.options.upload_location {
        Some(hook) => hook(name, id),
        None => format!("/v2/{name}/blobs/uploads/{id}"),
    }
}

pub(super) fn upload_headers(
    api: &Api,
    name: &RepositoryName,
    session: &UploadSession,
) -> RegistryResult<Vec<(HeaderName, HeaderValue)>> {
    Ok(vec![
        (
            header::LOCATION,
            value(&upload_location(api, name, &session.id))?,
        ),
        (header::RANGE, upload_range(session.offset)),
        (
            HeaderName::from_static("docker-upload-uuid"),
            value(&session.id)?,
        ),
    ])
}

pub(super) fn blob_created(name: &RepositoryName, blob: &BlobRecord) -> RegistryResult<Response> {
    Ok(empty(
        StatusCode::CREATED,
        vec![
            (header::LOCATION, value(&blob_location(name, &blob.digest))?),
            (docker_content_digest(), value(blob.digest.as_str())?),
        ],
    ))
}

/// Runs upload work in its own task, so that a client hanging up mid-body does not cancel it
/// half-way: the engine sees the body end and records what arrived.
pub(super) async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = RegistryResult<T>> + Send + 'static,
) -> RegistryResult<T> {
    tokio::spawn(work).await.map_err(RegistryError::internal)?
}
