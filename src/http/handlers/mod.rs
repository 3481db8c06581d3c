//! One function per operation, by resource: each turns a request into a registry call and the
//! answer into the spec's status and headers. This file routes a request, decides its access
//! and hands it to the resource's module.

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, StatusCode, header};

use std::sync::Arc;
use std::time::Duration;

use super::Api;
use super::endpoint::{Action as EndpointAction, Operation, Route, RouteError, Target, route};
use super::headers::query_pairs;
use super::observe::{RequestId, Routed, user_agent};
use crate::auth::{
    Access, AccessRequest, Action as AuthAction, Denial, Everything, Grant, Resource,
};
use crate::client::ClientAddress;
use crate::error::ErrorCode;
use crate::http::error::ApiError;
use crate::metadata::events::{EventAction, EventOrigin};
mod blobs;
mod common;
mod listings;
mod manifests;
mod uploads;

use blobs::*;
use common::*;
use listings::*;
use manifests::*;
use uploads::*;

pub(super) async fn handle(api: Arc<Api>, request: Request) -> Response {
    let client = crate::client::client_address(&request);
    let (parts, body) = request.into_parts();
    let path = match percent_encoding::percent_decode_str(parts.uri.path()).decode_utf8() {
        Ok(p) => p.into_owned(),
        Err(_) => {
            return ApiError::new(ErrorCode::NameInvalid, "request path is not valid UTF-8")
                .with_status(StatusCode::BAD_REQUEST)
                .into_response();
        }
    };
    let route = match route(&parts.method, &path) {
        Ok(r) => r,
        Err(RouteError::NotFound) => {
            return ApiError::new(ErrorCode::Unsupported, format!("no API endpoint at {path}"))
                .with_status(StatusCode::NOT_FOUND)
                .into_response();
        }
        Err(RouteError::MethodNotAllowed(allowed)) => {
            let allow = allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            return ApiError::new(
                ErrorCode::Unsupported,
                format!("{} is not allowed on {path}; use {allow}", parts.method),
            )
            .with_header(
                header::ALLOW,
                HeaderValue::from_str(&allow).unwrap_or(HeaderValue::from_static("GET")),
            )
            .into_response();
        }
        // A malformed name names nothing: it is refused before access is decided.
        Err(RouteError::InvalidName {
            operation,
            name,
            error,
        }) => {
            let mut response = ApiError::from(error).into_response();
            response.extensions_mut().insert(Routed {
                operation: operation.name(),
                repository: name,
                reference: String::new(),
                user: None,
            });
            return response;
        }
    };
    let mut routed = Routed {
        operation: route.operation.name(),
        repository: route
            .name
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        reference: route.target.to_string(),
        user: None,
    };
    let mut response = match authorize(&api, &parts, &route, client).await {
        Ok(grant) => {
            routed.user = grant.subject().map(str::to_owned);
            serve(api, parts, route, grant, body).await
        }
        Err(error) => {
            discard_body(&mut body_stream(&api, body), REFUSED_DRAIN).await;
            error.into_response()
        }
    };
    response.extensions_mut().insert(routed);
    response
}

/// Who asks for the changes of the request of `parts` (or pulls), as their events name it.
pub fn event_origin(parts: &Parts, grant: &dyn Grant) -> EventOrigin {
    let client = match parts.extensions.get::<ClientAddress>() {
        Some(client) => Some(client.0),
        None => parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip()),
    };
    EventOrigin {
        actor: grant.subject().map(str::to_owned),
        request_id: parts.extensions.get::<RequestId>().map(|id| id.0.clone()),
        client_addr: client.map(|ip| ip.to_string()),
        user_agent: Some(user_agent(&parts.headers)).filter(|agent| !agent.is_empty()),
    }
}

/// Serves an authorized request.
async fn serve(
    api: Arc<Api>,
    parts: Parts,
    route: Route,
    grant: Arc<dyn Grant>,
    body: axum::body::Body,
) -> Response {
    let operation = route.operation;
    let query = query_pairs(parts.uri.query());
    // The requests that change something, or pull where a webhook wants pulls, carry who
    // asked into the events they make.
    let makes_events = match operation {
        Operation::PutManifest
        | Operation::DeleteManifest
        | Operation::DeleteBlob
        | Operation::StartUpload
        | Operation::FinishUpload => true,
        Operation::GetManifest => api.registry.announces(EventAction::Pull),
        _ => false,
    };
    let registry = if makes_events {
        api.registry.on_behalf_of(event_origin(&parts, &*grant))
    } else {
        api.registry.clone()
    };
    let call = Call {
        registry,
        api,
        parts,
        route,
        query,
        grant,
    };
    if let Some(refusal) = mirror_refusal(&call) {
        return refusal.into_response();
    }
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
            if upload_op
                && error.status() == StatusCode::RANGE_NOT_SATISFIABLE
                && let (Some(name), Target::Upload(id)) = (&call.route.name, &call.route.target)
            {
                let mut error = error;
                if let Ok(v) = HeaderValue::from_str(&upload_location(&call.api, name, id.as_str()))
                {
                    error = error.with_header(header::LOCATION, v);
                }
                if let Ok(v) = HeaderValue::from_str(id.as_str()) {
                    error = error.with_header(HeaderName::from_static("docker-upload-uuid"), v);
                }
                return error.into_response();
            }
            error.into_response()
        }
    }
}

/// The refusal of a write into a name an upstream is mirrored into (unless the upstream
/// takes pushes): what is kept there is the upstream's content.
fn mirror_refusal(call: &Call) -> Option<ApiError> {
    if !matches!(
        call.route.operation.action(),
        EndpointAction::Push | EndpointAction::Delete
    ) {
        return None;
    }
    let name = call.route.name.as_ref()?;
    let (upstream, allow_push) = call.registry.mirrored(name.as_str(), containerd_ns(call))?;
    (!allow_push).then(|| {
        ApiError::new(
            ErrorCode::Denied,
            format!(
                "{name} is a mirror of upstream {upstream}: pushes and deletes are refused \
                 (push under a name no upstream maps, or set allow_push on the upstream)"
            ),
        )
        .with_status(StatusCode::FORBIDDEN)
    })
}

/// Bytes of a refused request's body read before answering (so the client reads the answer),
/// and for how long: a client that has not authenticated gets little.
const REFUSED_DRAIN: (u64, Duration) = (1024 * 1024, Duration::from_secs(2));

/// What an operation on the repository `name` needs of the caller.
fn needs(route: &Route) -> Vec<Access> {
    let action = match route.operation.action() {
        EndpointAction::None => return Vec::new(),
        EndpointAction::Catalog => return vec![Access::catalog()],
        EndpointAction::Pull => AuthAction::Pull,
        EndpointAction::Push => AuthAction::Push,
        EndpointAction::Delete => AuthAction::Delete,
    };
    match &route.name {
        Some(name) => vec![Access::repository(name.as_str(), action)],
        None => Vec::new(),
    }
}

/// Asks the registry's authorizer about a request; without one, everything is allowed.
async fn authorize(
    api: &Api,
    parts: &Parts,
    route: &Route,
    client: Option<std::net::IpAddr>,
) -> Result<Arc<dyn Grant>, ApiError> {
    let Some(authorizer) = &api.authorizer else {
        return Ok(Arc::new(Everything));
    };
    let needs = needs(route);
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
fn refusal(denial: Denial, needs: &[Access]) -> ApiError {
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
            ApiError::new(ErrorCode::Unauthorized, message)
                .with_detail(detail)
                .with_header(header::WWW_AUTHENTICATE, challenge)
        }
        Denial::Forbidden { challenge, message } => {
            let error = ApiError::new(ErrorCode::Denied, message).with_detail(detail);
            match challenge {
                Some(c) => error.with_header(header::WWW_AUTHENTICATE, c),
                None => error,
            }
        }
        Denial::TooManyAttempts { retry_after_secs } => ApiError::new(
            ErrorCode::TooManyRequests,
            format!("too many failed logins from this address; retry in {retry_after_secs} s"),
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from(retry_after_secs)),
        Denial::Unavailable(message) => ApiError::unavailable(message),
    }
}
