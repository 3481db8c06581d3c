//! What every operation's handler shares: the call it serves and the pieces of its answers.

use axum::body::Body;
use axum::response::Response;
use futures::StreamExt;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use futures::future::BoxFuture;

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Grant;
use crate::error::ErrorCode;
use crate::error::RegistryResult;
use crate::http::Api;
use crate::http::body_rate::MinRate;
use crate::http::endpoint::Route;
use crate::http::error::upload_range;
use crate::http::error::{ApiError, ApiResult};
use crate::metadata::{BlobRecord, UploadSession};
use crate::oci::{Digest, RepositoryName};
use crate::registry::Registry;
use crate::registry::uploads::BodyStream;

pub(super) struct Call {
    pub(super) api: Arc<Api>,
    pub(super) registry: Registry,
    pub(super) parts: Parts,
    pub(super) route: Route,
    pub(super) query: Vec<(String, String)>,
    /// What the caller may do, as the registry's authorizer decided.
    pub(super) grant: Arc<dyn Grant>,
}

pub(super) fn value(s: &str) -> ApiResult<HeaderValue> {
    HeaderValue::from_str(s).map_err(|e| ApiError::internal(format!("header value {s:?}: {e}")))
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
) -> ApiResult<Response> {
    let bytes = serde_json::to_vec(body).map_err(ApiError::internal)?;
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
pub(super) fn repository(call: &Call) -> ApiResult<RepositoryName> {
    call.route
        .name
        .clone()
        .ok_or_else(|| ApiError::internal("an operation without a repository asked for one"))
}

/// containerd's `ns` query parameter: the registry a `hosts.toml` mirror request was meant
/// for (`?ns=docker.io`).
pub(super) fn containerd_ns(call: &Call) -> Option<&str> {
    call.query
        .iter()
        .find(|(k, _)| k == "ns")
        .map(|(_, v)| v.as_str())
}

pub(super) fn target_digest(call: &Call) -> ApiResult<Digest> {
    Ok(call.route.target.digest()?.clone())
}

pub(super) fn content_length(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::new(ErrorCode::SizeInvalid, "Content-Length is not a number")
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
) -> ApiResult<Vec<(HeaderName, HeaderValue)>> {
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

pub(super) fn blob_created(name: &RepositoryName, blob: &BlobRecord) -> ApiResult<Response> {
    Ok(empty(
        StatusCode::CREATED,
        vec![
            (header::LOCATION, value(&blob_location(name, &blob.digest))?),
            (docker_content_digest(), value(blob.digest.as_str())?),
        ],
    ))
}

/// Runs upload work over a request body in its own task, so that a client hanging up
/// mid-body does not cancel it half-way: the engine sees the body end and records what
/// arrived. When the work fails, what is left of the body is read first (see
/// [`discard_body`]).
pub(super) async fn detached_upload<T, F>(api: &Api, body: Body, work: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: for<'a> FnOnce(&'a mut BodyStream) -> BoxFuture<'a, RegistryResult<T>> + Send + 'static,
{
    let mut stream = body_stream(api, body);
    let task = async move {
        let result = work(&mut stream).await;
        if result.is_err() {
            discard_body(&mut stream, UPLOAD_DRAIN).await;
        }
        result
    };
    Ok(tokio::spawn(task).await.map_err(ApiError::internal)??)
}

/// Bytes of a failed upload request's body read and thrown away before it is answered, and
/// for how long.
pub(super) const UPLOAD_DRAIN: (u64, Duration) = (64 * 1024 * 1024, Duration::from_secs(10));

/// Reads (a bounded part of) a body nobody will use before an error is answered: a client
/// still sending then reads the answer instead of hitting a reset connection.
pub(super) async fn discard_body(body: &mut BodyStream, (limit, time): (u64, Duration)) {
    let drain = async {
        let mut seen = 0u64;
        while let Some(Ok(chunk)) = body.next().await {
            seen += chunk.len() as u64;
            if seen > limit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(time, drain).await;
}
