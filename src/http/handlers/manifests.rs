//! Manifests: fetched, pushed (with their tags) and deleted.

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderName, HeaderValue, Method, StatusCode, header};

use super::common::*;
use crate::error::ErrorCode;
use crate::http::endpoint::Target;
use crate::http::error::{ApiError, ApiResult};
use crate::oci::{Reference, RepositoryName, Tag};

pub(super) fn manifest_reference(call: &Call) -> ApiResult<Reference> {
    Ok(call.route.target.reference()?.clone())
}

/// The reference of a manifest read or delete. One that can be neither a tag nor a digest
/// cannot name a stored manifest, so it is answered like any other missing one (404), as
/// clients and the conformance suite expect; only pushes refuse it as invalid.
pub(super) async fn existing_manifest_reference(
    call: &Call,
    name: &RepositoryName,
) -> ApiResult<Reference> {
    match &call.route.target {
        Target::Invalid { raw, .. } => Err(call
            .registry
            .not_found(name, ErrorCode::ManifestUnknown, raw)
            .await?
            .into()),
        target => Ok(target.reference()?.clone()),
    }
}

pub(super) async fn get_manifest(call: &Call) -> ApiResult<Response> {
    let name = repository(call)?;
    let reference = existing_manifest_reference(call, &name).await?;
    let pulled = call
        .registry
        .pull_manifest(&name, &reference, containerd_ns(call))
        .await?;
    let manifest = pulled.record;
    let mut headers = vec![
        (header::CONTENT_TYPE, value(&manifest.media_type)?),
        (
            header::CONTENT_LENGTH,
            HeaderValue::from(manifest.content.len()),
        ),
        (header::ETAG, value(&format!("\"{}\"", manifest.digest))?),
    ];
    let by_tag = matches!(reference, Reference::Tag(_));
    if !by_tag || call.api.options.tag_digest_header {
        headers.push((docker_content_digest(), value(manifest.digest.as_str())?));
    }
    if let Some(why) = pulled.stale {
        // RFC 9111's "response is stale" warning, with why in its text.
        let text = why.replace(['"', '\\'], "'");
        headers.push((
            header::WARNING,
            value(&format!("110 berth \"Response is stale: {text}\""))?,
        ));
    }
    let body = if call.parts.method == Method::HEAD {
        Body::empty()
    } else {
        call.registry
            .announce_pull(&name, &reference, &manifest)
            .await;
        Body::from(manifest.content)
    };
    Ok(response(StatusCode::OK, headers, body))
}

/// Bytes of a refused oversized manifest read and discarded before answering 413, so that
/// clients still sending get the answer instead of a broken pipe.
pub(super) const OVERSIZE_DRAIN_LIMIT: u64 = 64 * 1024 * 1024;

pub(super) async fn read_manifest_body(call: &Call, body: Body) -> ApiResult<Bytes> {
    let max = call.registry.options().max_manifest_size;
    let too_large = |size: String| {
        ApiError::new(
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
    let mut stream = body_stream(&call.api, body);
    let mut content = bytes::BytesMut::new();
    let mut seen: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            let error = ApiError::new(
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
pub(super) const MAX_TAGS_PER_PUSH: usize = 100;

/// Tags listed on one `OCI-Tag` header line.
pub(super) const OCI_TAGS_PER_LINE: usize = 10;

/// The `?tag=` parameters of a manifest push (end-7b of the next spec release).
pub(super) fn pushed_tags(call: &Call) -> ApiResult<Vec<Tag>> {
    let tags: Vec<&str> = call
        .query
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.as_str())
        .collect();
    if tags.len() > MAX_TAGS_PER_PUSH {
        return Err(ApiError::new(
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

pub(super) async fn put_manifest(call: &Call, body: Body) -> ApiResult<Response> {
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

pub(super) async fn delete_manifest(call: &Call) -> ApiResult<Response> {
    let name = repository(call)?;
    let reference = existing_manifest_reference(call, &name).await?;
    call.registry.delete_manifest(&name, &reference).await?;
    Ok(empty(StatusCode::ACCEPTED, Vec::new()))
}
