//! Blob uploads: started (or mounted, or pushed in one request), continued, finished,
//! cancelled.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use super::common::*;
use crate::auth::{Access, Action as AuthAction};
use crate::error::ErrorCode;
use crate::http::error::{ApiError, ApiResult};
use crate::http::headers::{parse_content_range, query_value};
use crate::oci::{Digest, DigestAlgorithm, RepositoryName};
use crate::registry::uploads::ChunkSpec;
use futures::FutureExt;

pub(super) fn chunk_spec(headers: &HeaderMap) -> ApiResult<ChunkSpec> {
    let length = content_length(headers)?;
    let range = headers
        .get(header::CONTENT_RANGE)
        .map(|v| {
            v.to_str()
                .map_err(|_| {
                    ApiError::new(ErrorCode::BlobUploadInvalid, "Content-Range is not ASCII")
                })
                .and_then(parse_content_range)
        })
        .transpose()?;
    if let (Some(range), Some(length)) = (range, length)
        && range.byte_count() != length
    {
        return Err(ApiError::new(
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

pub(super) async fn start_upload(call: &Call, body: Body) -> ApiResult<Response> {
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
        let allowed = match (&from, &call.api.authorizer) {
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
            Err(e) => {
                discard_body(&mut body_stream(&call.api, body), UPLOAD_DRAIN).await;
                return Err(e.into());
            }
        };
        let spec = chunk_spec(&call.parts.headers)?;
        let (reg, n, d) = (registry.clone(), name.clone(), digest.clone());
        let blob = detached_upload(&call.api, body, move |stream| {
            async move { reg.upload_blob(&n, &d, spec, stream).await }.boxed()
        })
        .await?;
        return blob_created(&name, &blob);
    }
    let algorithm = match query_value(&call.query, "digest-algorithm") {
        Some(a) => DigestAlgorithm::from_name(a).ok_or_else(|| {
            ApiError::new(
                ErrorCode::DigestInvalid,
                format!("digest-algorithm {a:?} is not supported; use sha256 or sha512"),
            )
        })?,
        None => DigestAlgorithm::Sha256,
    };
    // A body sent with a plain POST (or a refused single-request upload) is not used.
    discard_body(&mut body_stream(&call.api, body), UPLOAD_DRAIN).await;
    let session = registry.start_upload(&name, algorithm).await?;
    let mut headers = upload_headers(&call.api, &name, &session)?;
    headers.push((
        HeaderName::from_static("oci-chunk-min-length"),
        HeaderValue::from(call.api.options.chunk_min_length),
    ));
    Ok(empty(StatusCode::ACCEPTED, headers))
}

pub(super) async fn upload_status(call: &Call) -> ApiResult<Response> {
    let name = repository(call)?;
    let session = call
        .registry
        .upload_session(&name, call.route.target.upload()?)
        .await?;
    Ok(empty(
        StatusCode::NO_CONTENT,
        upload_headers(&call.api, &name, &session)?,
    ))
}

pub(super) async fn patch_upload(call: &Call, body: Body) -> ApiResult<Response> {
    let name = repository(call)?;
    let spec = chunk_spec(&call.parts.headers)?;
    let (reg, n, id) = (
        call.registry.clone(),
        name.clone(),
        call.route.target.upload()?.clone(),
    );
    let session = detached_upload(&call.api, body, move |stream| {
        async move { reg.append_upload(&n, &id, spec, stream).await }.boxed()
    })
    .await?;
    Ok(empty(
        StatusCode::ACCEPTED,
        upload_headers(&call.api, &name, &session)?,
    ))
}

pub(super) async fn finish_upload(call: &Call, body: Body) -> ApiResult<Response> {
    let name = repository(call)?;
    let digest = query_value(&call.query, "digest").ok_or_else(|| {
        ApiError::new(
            ErrorCode::DigestInvalid,
            "the digest query parameter is required to complete an upload",
        )
    })?;
    let digest = Digest::parse(digest)?;
    let spec = chunk_spec(&call.parts.headers)?;
    let (reg, n, id, d) = (
        call.registry.clone(),
        name.clone(),
        call.route.target.upload()?.clone(),
        digest.clone(),
    );
    let blob = detached_upload(&call.api, body, move |stream| {
        async move { reg.finish_upload(&n, &id, &d, spec, stream).await }.boxed()
    })
    .await?;
    blob_created(&name, &blob)
}

pub(super) async fn cancel_upload(call: &Call) -> ApiResult<Response> {
    let name = repository(call)?;
    call.registry
        .cancel_upload(&name, call.route.target.upload()?)
        .await?;
    Ok(empty(StatusCode::NO_CONTENT, Vec::new()))
}
