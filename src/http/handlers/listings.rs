//! Paginated lists: the catalog, a repository's tags, a manifest's referrers.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderName, HeaderValue, StatusCode, header};

use super::common::*;
use crate::error::ErrorCode;
use crate::http::error::{ApiError, ApiResult};
use crate::http::headers::query_value;
use crate::metadata::Page;
use crate::oci::{Descriptor, ImageIndex, RepositoryName, media_type};

pub(super) const REFERRERS_PAGE: u32 = 1000;

pub(super) struct Listing {
    pub(super) limit: Option<u32>,
    pub(super) last: Option<String>,
}

pub(super) fn listing(call: &Call) -> ApiResult<Listing> {
    let options = call.registry.options();
    let n = query_value(&call.query, "n")
        .map(|n| {
            n.parse::<u32>().map_err(|_| {
                ApiError::new(
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
        return Err(ApiError::new(
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
pub(super) fn page_plus_one(listing: &Listing) -> Page<'_> {
    Page {
        limit: listing.limit.map(|n| n.saturating_add(1)),
        after: listing.last.as_deref(),
    }
}

pub(super) fn link_header(
    call: &Call,
    path: &str,
    listing: &Listing,
    last: &str,
    extra: &[(&str, &str)],
) -> Option<(HeaderName, HeaderValue)> {
    if !call.api.options.link_headers {
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

pub(super) fn truncate_page<T>(items: &mut Vec<T>, listing: &Listing) -> bool {
    match listing.limit {
        Some(n) if items.len() > n as usize => {
            items.truncate(n as usize);
            true
        }
        _ => false,
    }
}

pub(super) fn api_version() -> Response {
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
pub(super) async fn visible_repositories(call: &Call, listing: &Listing) -> ApiResult<Vec<String>> {
    if call.api.authorizer.is_none() {
        return Ok(call.registry.repositories(page_plus_one(listing)).await?);
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

pub(super) async fn catalog(call: &Call) -> ApiResult<Response> {
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

pub(super) async fn list_tags(call: &Call) -> ApiResult<Response> {
    let name = repository(call)?;
    let listing = listing(call)?;
    let mut tags = match listing.limit {
        Some(0) => {
            // Still answers 404 for an unknown repository.
            call.registry
                .pull_tags(
                    &name,
                    Page {
                        limit: Some(0),
                        after: None,
                    },
                    containerd_ns(call),
                )
                .await?
        }
        _ => {
            call.registry
                .pull_tags(&name, page_plus_one(&listing), containerd_ns(call))
                .await?
        }
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

pub(super) async fn list_referrers(call: &Call) -> ApiResult<Response> {
    if !call.registry.options().referrers_api {
        return Err(ApiError::new(
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
