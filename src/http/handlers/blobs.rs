//! Blobs: fetched (or redirected to the store) and deleted.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, Method, StatusCode, header};

use super::common::*;
use crate::error::ErrorCode;
use crate::http::error::{ApiError, ApiResult};
use crate::http::headers::{RangeRequest, parse_range};
use crate::oci::{Descriptor, media_type};
use crate::registry::mirror::{BlobRead, PulledBlob};

pub(super) async fn get_blob(call: &Call) -> ApiResult<Response> {
    let name = repository(call)?;
    let digest = target_digest(call)?;
    let read = if call.parts.method == Method::HEAD {
        BlobRead::Head
    } else {
        BlobRead::Get
    };
    let digest_header = (docker_content_digest(), value(digest.as_str())?);
    let blob = match call
        .registry
        .pull_blob(&name, &digest, containerd_ns(call), read)
        .await?
    {
        PulledBlob::Stored(blob) => blob,
        PulledBlob::Upstream { size } => return Ok(blob_head(size, digest_header)),
        // A fetch streams whole: ranges are for stored blobs (RFC 9110 lets a server answer
        // a range request with the whole representation).
        PulledBlob::Fetching { size, body } => {
            let mut headers = vec![
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(media_type::OCTET_STREAM),
                ),
                digest_header,
            ];
            if let Some(size) = size {
                headers.push((header::CONTENT_LENGTH, HeaderValue::from(size)));
            }
            return Ok(response(StatusCode::OK, headers, Body::from_stream(body)));
        }
    };
    if call.parts.method == Method::HEAD {
        return Ok(blob_head(blob.size, digest_header));
    }
    let options = &call.api.options;
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
        None if options.redirect_blobs => call.registry.direct_url(&blob).await?,
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
            return Err(ApiError::new(
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

fn blob_head(size: u64, digest_header: (http::HeaderName, HeaderValue)) -> Response {
    response(
        StatusCode::OK,
        vec![
            (header::CONTENT_LENGTH, HeaderValue::from(size)),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(media_type::OCTET_STREAM),
            ),
            (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
            digest_header,
        ],
        Body::empty(),
    )
}

pub(super) async fn delete_blob(call: &Call) -> ApiResult<Response> {
    let name = repository(call)?;
    let digest = target_digest(call)?;
    call.registry.delete_blob(&name, &digest).await?;
    Ok(empty(StatusCode::ACCEPTED, Vec::new()))
}
