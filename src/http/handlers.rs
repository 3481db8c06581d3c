//! One function per operation; each turns a request into a registry call and the answer into
//! the spec's status and headers.

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};

use std::sync::Arc;
use std::time::Duration;

use super::body_rate::MinRate;
use super::endpoint::{Action as EndpointAction, Operation, Route, RouteError, route};
use super::headers::{RangeRequest, parse_content_range, parse_range, query_pairs, query_value};
use super::observe::Routed;
use crate::auth::{
    Access, AccessRequest, Action as AuthAction, Denial, Everything, Grant, Resource,
};
use crate::error::{ErrorCode, RegistryError, RegistryResult};
use crate::metadata::{BlobRecord, Page, UploadSession};
use crate::oci::{
    Descriptor, Digest, DigestAlgorithm, ImageIndex, Reference, RepositoryName, Tag, media_type,
};
use crate::registry::Registry;
use crate::registry::uploads::{
    BodyStream, ChunkSpec, discard_body, discard_body_within, upload_range,
};

const REFERRERS_PAGE: u32 = 1000;

struct Call {
    registry: Registry,
    parts: Parts,
    route: Route,
    query: Vec<(String, String)>,
    /// What the caller may do, as the registry's authorizer decided.
    grant: Arc<dyn Grant>,
}

pub(super) async fn handle(registry: Registry, request: Request) -> Response {
    let client = crate::auth::client_address(&request);
    let (parts, body) = request.into_parts();
    let path = match percent_encoding::percent_decode_str(parts.uri.path()).decode_utf8() {
        Ok(p) => p.into_owned(),
        Err(_) => {
            return RegistryError::new(ErrorCode::NameInvalid, "request path is not valid UTF-8")
                .with_status(StatusCode::BAD_REQUEST)
                .into_response();
        }
    };
    let route = match route(&parts.method, &path) {
        Ok(r) => r,
        Err(RouteError::NotFound) => {
            return RegistryError::new(
                ErrorCode::Unsupported,
                format!("no API endpoint at {path}"),
            )
            .with_status(StatusCode::NOT_FOUND)
            .into_response();
        }
        Err(RouteError::MethodNotAllowed(allowed)) => {
            let allow = allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            return RegistryError::new(
                ErrorCode::Unsupported,
                format!("{} is not allowed on {path}; use {allow}", parts.method),
            )
            .with_header(
                header::ALLOW,
                HeaderValue::from_str(&allow).unwrap_or(HeaderValue::from_static("GET")),
            )
            .into_response();
        }
    };
    let mut routed = Routed {
        operation: route.operation.name(),
        repository: route.name.clone(),
        reference: route.target.clone(),
        user: None,
    };
    let mut response = match authorize(&registry, &parts, &route, client).await {
        Ok(grant) => {
            routed.user = grant.subject().map(str::to_owned);
            serve(registry, parts, route, grant, body).await
        }
        Err(error) => discard_body_within(body_stream(&registry, body), error, REFUSED_DRAIN)
            .await
            .into_response(),
    };
    response.extensions_mut().insert(routed);
    response
}

/// Serves an authorized request.
async fn serve(
    registry: Registry,
    parts: Parts,
    route: Route,
    grant: Arc<dyn Grant>,
    body: axum::body::Body,
) -> Response {
    let operation = route.operation;
    let query = query_pairs(parts.uri.query());
    let call = Call {
        registry,
        parts,
        route,
        query,
        grant,
    };
    let upload_id = call.route.target.clone();
    let name = call.route.name.clone();
    let result = match operation {
        Operation::ApiVersion => Ok(api_version()),
        Operation::Catalog => catalog(&call).await,
        Operation::ListTags => list_tags(&call).await,
        Operation::GetManifest | Operation::HeadManifest => get_manifest(&call).await,
        Operation::PutManifest => put_manifest(&call, body).await,
        Operation::DeleteManifest => delete_manifest(&call).await,
        Operation::GetBlob | Operation::HeadBlob => get_blob(&call).await,
        Operation::DeleteBlob => delete_blob(&call).await,
        Operation::StartUpload => start_upload(&call, body).await,
        Operation::UploadStatus => upload_status(&call).await,
        Operation::PatchUpload => patch_upload(&call, body).await,
        Operation::FinishUpload => finish_upload(&call, body).await,
        Operation::CancelUpload => cancel_upload(&call).await,
        Operation::ListReferrers => list_referrers(&call).await,
    };
    match result {
        Ok(response) => response,
        Err(error) => {
            let upload_op = matches!(
                operation,
                Operation::UploadStatus | Operation::PatchUpload | Operation::FinishUpload
            );
            if upload_op && error.status() == StatusCode::RANGE_NOT_SATISFIABLE {
                let location = match RepositoryName::parse(&name) {
                    Ok(n) => upload_location(&call.registry, &n, &upload_id),
                    Err(_) => String::new(),
                };
                let mut error = error;
                if let Ok(v) = HeaderValue::from_str(&location) {
                    error = error.with_header(header::LOCATION, v);
                }
                if let Ok(v) = HeaderValue::from_str(&upload_id) {
                    error = error.with_header(HeaderName::from_static("docker-upload-uuid"), v);
                }
                return error.into_response();
            }
            error.into_response()
        }
    }
}

// ---- access control -----------------------------------------------------------------------

/// Bytes of a refused request's body read before answering (so the client reads the answer),
/// and for how long: a client that has not authenticated gets little.
const REFUSED_DRAIN: (u64, Duration) = (1024 * 1024, Duration::from_secs(2));

/// What an operation needs of the caller.
fn needs(route: &Route) -> Result<Vec<Access>, RegistryError> {
    let action = match route.operation.action() {
        EndpointAction::None => return Ok(Vec::new()),
        EndpointAction::Catalog => return Ok(vec![Access::catalog()]),
        EndpointAction::Pull => AuthAction::Pull,
        EndpointAction::Push => AuthAction::Push,
        EndpointAction::Delete => AuthAction::Delete,
    };
    // A malformed name is refused before access is decided: it names nothing.
    let name = RepositoryName::parse(&route.name)?;
    Ok(vec![Access::repository(name.as_str(), action)])
}

/// Asks the registry's authorizer about a request; without one, everything is allowed.
async fn authorize(
    registry: &Registry,
    parts: &Parts,
    route: &Route,
    client: Option<std::net::IpAddr>,
) -> Result<Arc<dyn Grant>, RegistryError> {
    let Some(authorizer) = registry.authorizer() else {
        return Ok(Arc::new(Everything));
    };
    let needs = needs(route)?;
    let request = AccessRequest {
        headers: &parts.headers,
        client,
        needs: &needs,
    };
    authorizer
        .authorize(&request)
        .await
        .map_err(|denial| refusal(denial, &needs))
}

/// The answer to a refused request.
fn refusal(denial: Denial, needs: &[Access]) -> RegistryError {
    // Distribution's detail: the accesses the request needed.
    let detail = serde_json::Value::Array(
        needs
            .iter()
            .map(|a| match (&a.resource, a.action) {
                (Resource::Repository(name), Some(action)) => serde_json::json!({
                    "Type": "repository", "Name": name, "Action": action.as_str()
                }),
                _ => serde_json::json!({ "Type": "registry", "Name": "catalog", "Action": "*" }),
            })
            .collect(),
    );
    match denial {
        Denial::Unauthenticated { challenge, message } => {
            RegistryError::new(ErrorCode::Unauthorized, message)
                .with_detail(detail)
                .with_header(header::WWW_AUTHENTICATE, challenge)
        }
        Denial::Forbidden { challenge, message } => {
            let error = RegistryError::new(ErrorCode::Denied, message).with_detail(detail);
            match challenge {
                Some(c) => error.with_header(header::WWW_AUTHENTICATE, c),
                None => error,
            }
        }
        Denial::TooManyAttempts { retry_after_secs } => RegistryError::new(
            ErrorCode::TooManyRequests,
            format!("too many failed logins from this address; retry in {retry_after_secs} s"),
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from(retry_after_secs)),
        Denial::Unavailable(message) => RegistryError::unavailable(message),
    }
}

// ---- helpers ------------------------------------------------------------------------------

fn value(s: &str) -> RegistryResult<HeaderValue> {
    HeaderValue::from_str(s)
        .map_err(|e| RegistryError::internal(format!("header value {s:?}: {e}")))
}

fn response(status: StatusCode, headers: Vec<(HeaderName, HeaderValue)>, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let map = r.headers_mut();
    for (k, v) in headers {
        map.insert(k, v);
    }
    r
}

fn empty(status: StatusCode, mut headers: Vec<(HeaderName, HeaderValue)>) -> Response {
    headers.push((header::CONTENT_LENGTH, HeaderValue::from_static("0")));
    response(status, headers, Body::empty())
}

fn json(
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

fn docker_content_digest() -> HeaderName {
    HeaderName::from_static("docker-content-digest")
}

fn repository(call: &Call) -> RegistryResult<RepositoryName> {
    Ok(RepositoryName::parse(&call.route.name)?)
}

fn target_digest(call: &Call) -> RegistryResult<Digest> {
    Ok(Digest::parse(&call.route.target)?)
}

fn content_length(headers: &HeaderMap) -> RegistryResult<Option<u64>> {
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

fn chunk_spec(headers: &HeaderMap) -> RegistryResult<ChunkSpec> {
    let length = content_length(headers)?;
    let range = headers
        .get(header::CONTENT_RANGE)
        .map(|v| {
            v.to_str()
                .map_err(|_| {
                    RegistryError::new(ErrorCode::BlobUploadInvalid, "Content-Range is not ASCII")
                })
                .and_then(parse_content_range)
        })
        .transpose()?;
    if let (Some(range), Some(length)) = (range, length)
        && range.byte_count() != length
    {
        return Err(RegistryError::new(
            ErrorCode::SizeInvalid,
            format!(
                "Content-Range covers {} bytes but Content-Length is {length}",
                range.byte_count()
            ),
        ));
    }
    Ok(ChunkSpec {
        start: range.map(|r| r.first),
        length: range.map(|r| r.byte_count()).or(length),
    })
}

/// A request body as a stream of bytes, ended if the client sends slower than the
/// registry's minimum body rate.
fn body_stream(registry: &Registry, body: Body) -> BodyStream {
    let options = registry.options();
    let stream = body
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other));
    MinRate::new(stream, options.body_min_rate, options.body_rate_window).boxed()
}

fn blob_location(name: &RepositoryName, digest: &Digest) -> String {
    format!("/v2/{name}/blobs/{digest}")
}

fn upload_location(registry: &Registry, name: &RepositoryName, id: &str) -> String {
    match &registry.options().upload_location {
        Some(hook) => hook(name, id),
        None => format!("/v2/{name}/blobs/uploads/{id}"),
    }
}

fn upload_headers(
    registry: &Registry,
    name: &RepositoryName,
    session: &UploadSession,
) -> RegistryResult<Vec<(HeaderName, HeaderValue)>> {
    Ok(vec![
        (
            header::LOCATION,
            value(&upload_location(registry, name, &session.id))?,
        ),
        (header::RANGE, upload_range(session.offset)),
        (
            HeaderName::from_static("docker-upload-uuid"),
            value(&session.id)?,
        ),
    ])
}

fn blob_created(name: &RepositoryName, blob: &BlobRecord) -> RegistryResult<Response> {
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
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = RegistryResult<T>> + Send + 'static,
) -> RegistryResult<T> {
    tokio::spawn(work).await.map_err(RegistryError::internal)?
}

struct Listing {
    limit: Option<u32>,
    last: Option<String>,
}

fn listing(call: &Call) -> RegistryResult<Listing> {
    let options = call.registry.options();
    let n = query_value(&call.query, "n")
        .map(|n| {
            n.parse::<u32>().map_err(|_| {
                RegistryError::new(
                    ErrorCode::Unsupported,
                    format!("query parameter n={n:?} is not a non-negative integer"),
                )
                .with_status(StatusCode::BAD_REQUEST)
            })
        })
        .transpose()?;
    if let (Some(n), Some(max)) = (n, options.max_page_size)
        && n > max
    {
        return Err(RegistryError::new(
            ErrorCode::Unsupported,
            format!("n={n} exceeds the maximum page size of {max}"),
        )
        .with_status(StatusCode::BAD_REQUEST));
    }
    Ok(Listing {
        limit: n.or(options.max_page_size),
        last: query_value(&call.query, "last").map(str::to_owned),
    })
}

/// Fetches one more than asked to learn whether a next page exists.
fn page_plus_one(listing: &Listing) -> Page<'_> {
    Page {
        limit: listing.limit.map(|n| n.saturating_add(1)),
        after: listing.last.as_deref(),
    }
}

fn link_header(
    call: &Call,
    path: &str,
    listing: &Listing,
    last: &str,
    extra: &[(&str, &str)],
) -> Option<(HeaderName, HeaderValue)> {
    if !call.registry.options().link_headers {
        return None;
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(n) = listing.limit {
        query.append_pair("n", &n.to_string());
    }
    for (k, v) in extra {
        query.append_pair(k, v);
    }
    query.append_pair("last", last);
    let link = format!("<{path}?{}>; rel=\"next\"", query.finish());
    HeaderValue::from_str(&link).ok().map(|v| (header::LINK, v))
}

fn truncate_page<T>(items: &mut Vec<T>, listing: &Listing) -> bool {
    match listing.limit {
        Some(n) if items.len() > n as usize => {
            items.truncate(n as usize);
            true
        }
        _ => false,
    }
}

// ---- operations ---------------------------------------------------------------------------

fn api_version() -> Response {
    response(
        StatusCode::OK,
        vec![
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from_static("2")),
        ],
        Body::from("{}"),
    )
}

/// Repositories the caller may see, one more than the page asks for (to learn whether a next
/// page exists). With access control, names the caller may not pull are skipped and more are
/// read until the page is full.
async fn visible_repositories(call: &Call, listing: &Listing) -> RegistryResult<Vec<String>> {
    if call.registry.authorizer().is_none() {
        return call.registry.repositories(page_plus_one(listing)).await;
    }
    let wanted = listing.limit.map(|n| n as usize + 1);
    let mut visible = Vec::new();
    let mut after = listing.last.clone();
    loop {
        let batch = wanted.map_or(1000, |w| (w - visible.len()).clamp(100, 1000));
        let page = call
            .registry
            .repositories(Page {
                limit: Some(batch as u32),
                after: after.as_deref(),
            })
            .await?;
        let exhausted = page.len() < batch;
        after = page.last().cloned();
        for name in page {
            let listed = RepositoryName::parse(&name).is_ok_and(|n| call.grant.may_list(&n));
            if listed {
                visible.push(name);
                if wanted.is_some_and(|w| visible.len() >= w) {
                    return Ok(visible);
                }
            }
        }
        if exhausted {
            return Ok(visible);
        }
    }
}

async fn catalog(call: &Call) -> RegistryResult<Response> {
    let listing = listing(call)?;
    let mut repositories = match listing.limit {
        Some(0) => Vec::new(),
        _ => visible_repositories(call, &listing).await?,
    };
    let more = truncate_page(&mut repositories, &listing);
    let mut r = json(
        StatusCode::OK,
        "application/json",
        &serde_json::json!({ "repositories": repositories }),
    )?;
    if more
        && let Some(last) = repositories.last()
        && let Some((k, v)) = link_header(call, "/v2/_catalog", &listing, last, &[])
    {
        r.headers_mut().insert(k, v);
    }
    Ok(r)
}

async fn list_tags(call: &Call) -> RegistryResult<Response> {
    let name = repository(call)?;
    let listing = listing(call)?;
    let mut tags = match listing.limit {
        Some(0) => {
            // Still answers 404 for an unknown repository.
            call.registry
                .tags(
                    &name,
                    Page {
                        limit: Some(0),
                        after: None,
                    },
                )
                .await?
        }
        _ => call.registry.tags(&name, page_plus_one(&listing)).await?,
    };
    let more = truncate_page(&mut tags, &listing);
    let mut r = json(
        StatusCode::OK,
        "application/json",
        &serde_json::json!({ "name": name.as_str(), "tags": tags }),
    )?;
    if more
        && let Some(last) = tags.last()
        && let Some((k, v)) =
            link_header(call, &format!("/v2/{name}/tags/list"), &listing, last, &[])
    {
        r.headers_mut().insert(k, v);
    }
    Ok(r)
}

fn manifest_reference(call: &Call) -> RegistryResult<Reference> {
    Ok(Reference::parse(&call.route.target)?)
}

/// The reference of a manifest read or delete. One that can be neither a tag nor a digest
/// cannot name a stored manifest, so it is answered like any other missing one (404), as
/// clients and the conformance suite expect; only pushes refuse it as invalid.
async fn existing_manifest_reference(
    call: &Call,
    name: &RepositoryName,
) -> RegistryResult<Reference> {
    match Reference::parse(&call.route.target) {
        Ok(reference) => Ok(reference),
        Err(_) => Err(call
            .registry
            .not_found(name, ErrorCode::ManifestUnknown, &call.route.target)
            .await?),
    }
}

async fn get_manifest(call: &Call) -> RegistryResult<Response> {
    let name = repository(call)?;
    let reference = existing_manifest_reference(call, &name).await?;
    let manifest = call.registry.manifest(&name, &reference).await?;
    let mut headers = vec![
        (header::CONTENT_TYPE, value(&manifest.media_type)?),
        (
            header::CONTENT_LENGTH,
            HeaderValue::from(manifest.content.len()),
        ),
        (header::ETAG, value(&format!("\"{}\"", manifest.digest))?),
    ];
    let by_tag = matches!(reference, Reference::Tag(_));
    if !by_tag || call.registry.options().tag_digest_header {
        headers.push((docker_content_digest(), value(manifest.digest.as_str())?));
    }
    let body = if call.parts.method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(manifest.content)
    };
    Ok(response(StatusCode::OK, headers, body))
}

/// Bytes of a refused oversized manifest read and discarded before answering 413, so that
/// clients still sending get the answer instead of a broken pipe.
const OVERSIZE_DRAIN_LIMIT: u64 = 64 * 1024 * 1024;

async fn read_manifest_body(call: &Call, body: Body) -> RegistryResult<Bytes> {
    let max = call.registry.options().max_manifest_size;
    let too_large = |size: String| {
        RegistryError::new(
            ErrorCode::ManifestInvalid,
            format!("manifest is {size} bytes; the limit is {max}"),
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    let declared = content_length(&call.parts.headers)?;
    if let Some(length) = declared
        && length > OVERSIZE_DRAIN_LIMIT
    {
        return Err(too_large(length.to_string()));
    }
    let mut stream = body_stream(&call.registry, body);
    let mut content = bytes::BytesMut::new();
    let mut seen: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            let error = RegistryError::new(
                ErrorCode::ManifestInvalid,
                format!("could not read the manifest body: {e}"),
            );
            if e.kind() == std::io::ErrorKind::TimedOut {
                error.with_status(StatusCode::REQUEST_TIMEOUT)
            } else {
                error
            }
        })?;
        seen += chunk.len() as u64;
        if seen > OVERSIZE_DRAIN_LIMIT {
            break;
        }
        if seen <= max as u64 {
            content.extend_from_slice(&chunk);
        }
    }
    if seen > max as u64 {
        return Err(too_large(match declared {
            Some(length) => length.to_string(),
            None => format!("more than {max}"),
        }));
    }
    Ok(content.freeze())
}

/// Most `?tag=` parameters one manifest push may carry (the spec asks for at least 10).
const MAX_TAGS_PER_PUSH: usize = 100;
/// Tags listed on one `OCI-Tag` header line.
const OCI_TAGS_PER_LINE: usize = 10;

/// The `?tag=` parameters of a manifest push (end-7b of the next spec release).
fn pushed_tags(call: &Call) -> RegistryResult<Vec<Tag>> {
    let tags: Vec<&str> = call
        .query
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.as_str())
        .collect();
    if tags.len() > MAX_TAGS_PER_PUSH {
        return Err(RegistryError::new(
            ErrorCode::Unsupported,
            format!(
                "{} tags in one push; at most {MAX_TAGS_PER_PUSH} are accepted per request",
                tags.len()
            ),
        )
        .with_status(StatusCode::URI_TOO_LONG));
    }
    Ok(tags.into_iter().map(Tag::parse).collect::<Result<_, _>>()?)
}

async fn put_manifest(call: &Call, body: Body) -> RegistryResult<Response> {
    let name = repository(call)?;
    let reference = manifest_reference(call)?;
    let tags = pushed_tags(call)?;
    let content_type = call
        .parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let bytes = read_manifest_body(call, body).await?;
    let pushed = call
        .registry
        .put_manifest_tagged(&name, &reference, &tags, content_type, &bytes)
        .await?;
    let mut headers = vec![
        (
            header::LOCATION,
            value(&format!("/v2/{name}/manifests/{}", pushed.digest))?,
        ),
        (docker_content_digest(), value(pushed.digest.as_str())?),
    ];
    if let Some(subject) = &pushed.parsed.subject
        && call.registry.options().referrers_api
    {
        headers.push((
            HeaderName::from_static("oci-subject"),
            value(subject.as_str())?,
        ));
    }
    let mut response = empty(StatusCode::CREATED, headers);
    // The tags set, as comma-separated lists (RFC 9110), ten to a header line: a line per tag
    // would pass the 100-header limit of common HTTP clients.
    for group in pushed.tags.chunks(OCI_TAGS_PER_LINE) {
        let line = group.iter().map(Tag::as_str).collect::<Vec<_>>().join(", ");
        response
            .headers_mut()
            .append(HeaderName::from_static("oci-tag"), value(&line)?);
    }
    Ok(response)
}

async fn delete_manifest(call: &Call) -> RegistryResult<Response> {
    let name = repository(call)?;
    let reference = existing_manifest_reference(call, &name).await?;
    call.registry.delete_manifest(&name, &reference).await?;
    Ok(empty(StatusCode::ACCEPTED, Vec::new()))
}

async fn get_blob(call: &Call) -> RegistryResult<Response> {
    let name = repository(call)?;
    let digest = target_digest(call)?;
    let blob = call.registry.blob(&name, &digest).await?;
    let digest_header = (docker_content_digest(), value(blob.digest.as_str())?);
    if call.parts.method == Method::HEAD {
        return Ok(response(
            StatusCode::OK,
            vec![
                (header::CONTENT_LENGTH, HeaderValue::from(blob.size)),
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(media_type::OCTET_STREAM),
                ),
                (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
                digest_header,
            ],
            Body::empty(),
        ));
    }
    let options = call.registry.options();
    let redirect = match &options.blob_location {
        Some(hook) => hook(
            &name,
            &Descriptor {
                media_type: media_type::OCTET_STREAM.to_owned(),
                digest: blob.digest.clone(),
                size: blob.size,
                urls: None,
                annotations: None,
                data: None,
                artifact_type: None,
                platform: None,
            },
        ),
        None => None,
    };
    let redirect = match redirect {
        Some(url) => Some(url),
        None if options.redirect_blobs => {
            call.registry
                .blob_store()
                .presigned_url(&blob.storage_key)
                .await?
        }
        None => None,
    };
    if let Some(url) = redirect {
        return Ok(empty(
            StatusCode::TEMPORARY_REDIRECT,
            vec![(header::LOCATION, value(&url)?), digest_header],
        ));
    }
    let range_header = call
        .parts
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok());
    let (status, range, mut headers) = match parse_range(range_header, blob.size) {
        RangeRequest::Whole => (
            StatusCode::OK,
            None,
            vec![(header::CONTENT_LENGTH, HeaderValue::from(blob.size))],
        ),
        RangeRequest::Partial(r) => (
            StatusCode::PARTIAL_CONTENT,
            Some(r),
            vec![
                (header::CONTENT_LENGTH, HeaderValue::from(r.len())),
                (
                    header::CONTENT_RANGE,
                    value(&format!("bytes {}-{}/{}", r.start, r.end - 1, blob.size))?,
                ),
            ],
        ),
        RangeRequest::Unsatisfiable => {
            return Err(RegistryError::new(
                ErrorCode::BlobUnknown,
                format!(
                    "range {:?} is not satisfiable for a blob of {} bytes",
                    range_header.unwrap_or(""),
                    blob.size
                ),
            )
            .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
            .with_header(
                header::CONTENT_RANGE,
                value(&format!("bytes */{}", blob.size))?,
            ));
        }
    };
    let stream = call.registry.read_blob(&blob, range).await?;
    headers.extend([
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(media_type::OCTET_STREAM),
        ),
        (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
        digest_header,
    ]);
    Ok(response(status, headers, Body::from_stream(stream)))
}

async fn delete_blob(call: &Call) -> RegistryResult<Response> {
    let name = repository(call)?;
    let digest = target_digest(call)?;
    call.registry.delete_blob(&name, &digest).await?;
    Ok(empty(StatusCode::ACCEPTED, Vec::new()))
}

async fn start_upload(call: &Call, body: Body) -> RegistryResult<Response> {
    let name = repository(call)?;
    let registry = &call.registry;
    if let Some(mount) = query_value(&call.query, "mount") {
        let digest = Digest::parse(mount)?;
        let from = query_value(&call.query, "from")
            .filter(|f| !f.is_empty())
            .map(RepositoryName::parse)
            .transpose()?;
        // Under access control a blob is mounted only from a repository the caller may pull
        // from, and so only when it names one; otherwise this is a plain upload (202).
        let allowed = match (&from, registry.authorizer()) {
            (_, None) => true,
            (Some(from), Some(_)) => call
                .grant
                .allows(&Access::repository(from.as_str(), AuthAction::Pull)),
            (None, Some(_)) => false,
        };
        if allowed && let Some(blob) = registry.mount_blob(&name, &digest, from.as_ref()).await? {
            return blob_created(&name, &blob);
        }
    } else if let Some(digest) = query_value(&call.query, "digest")
        && registry.options().single_request_uploads
    {
        let digest = match Digest::parse(digest) {
            Ok(d) => d,
            Err(e) => return Err(discard_body(body_stream(&call.registry, body), e.into()).await),
        };
        let spec = chunk_spec(&call.parts.headers)?;
        let (reg, n, d) = (registry.clone(), name.clone(), digest.clone());
        let stream = body_stream(&call.registry, body);
        let blob = detached(async move { reg.upload_blob(&n, &d, spec, stream).await }).await?;
        return blob_created(&name, &blob);
    }
    let algorithm = match query_value(&call.query, "digest-algorithm") {
        Some(a) => DigestAlgorithm::from_name(a).ok_or_else(|| {
            RegistryError::new(
                ErrorCode::DigestInvalid,
                format!("digest-algorithm {a:?} is not supported; use sha256 or sha512"),
            )
        })?,
        None => DigestAlgorithm::Sha256,
    };
    // A body sent with a plain POST (or a refused single-request upload) is not used.
    let _ = discard_body(
        body_stream(&call.registry, body),
        RegistryError::internal("unused"),
    )
    .await;
    let session = registry.start_upload(&name, algorithm).await?;
    let mut headers = upload_headers(registry, &name, &session)?;
    headers.push((
        HeaderName::from_static("oci-chunk-min-length"),
        HeaderValue::from(registry.options().chunk_min_length),
    ));
    Ok(empty(StatusCode::ACCEPTED, headers))
}

async fn upload_status(call: &Call) -> RegistryResult<Response> {
    let name = repository(call)?;
    let session = call
        .registry
        .upload_session(&name, &call.route.target)
        .await?;
    Ok(empty(
        StatusCode::NO_CONTENT,
        upload_headers(&call.registry, &name, &session)?,
    ))
}

async fn patch_upload(call: &Call, body: Body) -> RegistryResult<Response> {
    let name = repository(call)?;
    let spec = chunk_spec(&call.parts.headers)?;
    let (reg, n, id) = (
        call.registry.clone(),
        name.clone(),
        call.route.target.clone(),
    );
    let stream = body_stream(&call.registry, body);
    let session = detached(async move { reg.append_upload(&n, &id, spec, stream).await }).await?;
    Ok(empty(
        StatusCode::ACCEPTED,
        upload_headers(&call.registry, &name, &session)?,
    ))
}

async fn finish_upload(call: &Call, body: Body) -> RegistryResult<Response> {
    let name = repository(call)?;
    let digest = query_value(&call.query, "digest").ok_or_else(|| {
        RegistryError::new(
            ErrorCode::DigestInvalid,
            "the digest query parameter is required to complete an upload",
        )
    })?;
    let digest = Digest::parse(digest)?;
    let spec = chunk_spec(&call.parts.headers)?;
    let (reg, n, id, d) = (
        call.registry.clone(),
        name.clone(),
        call.route.target.clone(),
        digest.clone(),
    );
    let stream = body_stream(&call.registry, body);
    let blob = detached(async move { reg.finish_upload(&n, &id, &d, spec, stream).await }).await?;
    blob_created(&name, &blob)
}

async fn cancel_upload(call: &Call) -> RegistryResult<Response> {
    let name = repository(call)?;
    call.registry
        .cancel_upload(&name, &call.route.target)
        .await?;
    Ok(empty(StatusCode::NO_CONTENT, Vec::new()))
}

async fn list_referrers(call: &Call) -> RegistryResult<Response> {
    if !call.registry.options().referrers_api {
        return Err(RegistryError::new(
            ErrorCode::Unsupported,
            "the referrers API is disabled on this registry",
        )
        .with_status(StatusCode::NOT_FOUND));
    }
    let name = repository(call)?;
    let subject = target_digest(call)?;
    let artifact_type = query_value(&call.query, "artifactType").filter(|t| !t.is_empty());
    let listing = Listing {
        limit: Some(REFERRERS_PAGE),
        last: query_value(&call.query, "last").map(str::to_owned),
    };
    let mut records = call
        .registry
        .referrers(&name, &subject, artifact_type, page_plus_one(&listing))
        .await?;
    let more = truncate_page(&mut records, &listing);
    let mut index = ImageIndex::empty();
    index.manifests = records
        .into_iter()
        .map(|r| Descriptor {
            media_type: r.media_type,
            digest: r.digest,
            size: r.size,
            urls: None,
            annotations: r.annotations,
            data: None,
            artifact_type: r.artifact_type,
            platform: None,
        })
        .collect();
    let mut r = json(StatusCode::OK, media_type::OCI_INDEX, &index)?;
    if artifact_type.is_some() {
        r.headers_mut().insert(
            HeaderName::from_static("oci-filters-applied"),
            HeaderValue::from_static("artifactType"),
        );
    }
    if more && let Some(last) = index.manifests.last() {
        let extra: Vec<(&str, &str)> = artifact_type
            .map(|t| ("artifactType", t))
            .into_iter()
            .collect();
        let listing = Listing {
            limit: None,
            last: None,
        };
        if let Some((k, v)) = link_header(
            call,
            &format!("/v2/{name}/referrers/{subject}"),
            &listing,
            last.digest.as_str(),
            &extra,
        ) {
            r.headers_mut().insert(k, v);
        }
    }
    Ok(r)
}
