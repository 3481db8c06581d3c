//! The token endpoint of Berth's own issuer: `GET /token` (Docker token authentication, with
//! Basic credentials or none) and `POST /token` (the OAuth2 form: password and refresh-token
//! grants).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};
use http_body_util::BodyExt;

use super::headers::query_pairs;
use crate::auth::basic::basic_credentials;
use crate::auth::issuer::{IssueError, IssuedToken, Login, TokenIssuer, TokenRequest};
use crate::auth::scope::ScopeEntry;
use crate::error::ErrorCode;
use crate::http::error::ApiError;

/// Largest OAuth2 form accepted.
const MAX_FORM: usize = 16 * 1024;

#[derive(Clone)]
struct TokenState {
    issuer: Arc<TokenIssuer>,
    realm: String,
}

/// `GET` and `POST /token`, served by `issuer`; failed logins are challenged with a Basic
/// `realm`. Requests are logged and measured like the API's ([`super::observed`]), with
/// `proxies` trusted for client addresses.
pub fn token_router(
    issuer: Arc<TokenIssuer>,
    realm: impl Into<String>,
    proxies: crate::client::TrustedProxies,
) -> Router {
    let router = Router::new()
        .route("/token", get(get_token).post(post_token))
        .with_state(TokenState {
            issuer,
            realm: realm.into(),
        })
        .layer(axum::middleware::map_response(
            |mut response: Response| async move {
                response.extensions_mut().insert(super::observe::Routed {
                    operation: "token",
                    ..Default::default()
                });
                response
            },
        ));
    // The access log names the path only: a token request's query may name an account.
    super::observed(router, proxies)
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Tokens must not be cached (RFC 6749, 5.1).
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn truthy(v: &str) -> bool {
    matches!(v, "true" | "1" | "yes")
}

/// Docker token authentication: `GET /token?service=…&scope=…&offline_token=true`.
async fn get_token(State(state): State<TokenState>, request: Request) -> Response {
    let client = crate::client::client_address(&request);
    let query = query_pairs(request.uri().query());
    let login = match basic_credentials(request.headers()) {
        Some(Ok((user, password))) => Login::Password { user, password },
        Some(Err(())) => {
            return refused(&state, IssueError::BadCredentials);
        }
        None => Login::Anonymous,
    };
    let value = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let scopes = query
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| ScopeEntry::parse_list(v))
        .collect();
    let issued = state
        .issuer
        .issue(TokenRequest {
            login,
            service: value("service"),
            scopes,
            offline: value("offline_token").is_some_and(|v| truthy(&v)),
            client,
        })
        .await;
    match issued {
        Ok(token) => json(StatusCode::OK, get_answer(&token)),
        Err(e) => refused(&state, e),
    }
}

fn get_answer(token: &IssuedToken) -> serde_json::Value {
    let mut answer = serde_json::json!({
        "token": token.token,
        "access_token": token.token,
        "expires_in": token.expires_in,
        "issued_at": token.issued_at,
    });
    if let Some(refresh) = &token.refresh_token {
        answer["refresh_token"] = serde_json::Value::from(refresh.as_str());
    }
    answer
}

/// The answer to a refused `GET`, in the registry's error envelope.
fn refused(state: &TokenState, error: IssueError) -> Response {
    let error = match &error {
        IssueError::BadCredentials | IssueError::BadRefreshToken(_) => {
            ApiError::new(ErrorCode::Unauthorized, error.to_string()).with_header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_str(&format!("Basic realm=\"{}\"", state.realm))
                    .unwrap_or_else(|_| HeaderValue::from_static("Basic")),
            )
        }
        IssueError::TooManyAttempts(wait) => {
            ApiError::new(ErrorCode::TooManyRequests, error.to_string())
                .with_header(header::RETRY_AFTER, HeaderValue::from(*wait))
        }
        IssueError::UnknownService(_) => {
            ApiError::new(ErrorCode::Denied, error.to_string()).with_status(StatusCode::BAD_REQUEST)
        }
        IssueError::Internal(_) => ApiError::internal(error.to_string()),
    };
    error.into_response()
}

/// The OAuth2 error answer of a refused `POST` (RFC 6749, 5.2).
fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    json(
        status,
        serde_json::json!({ "error": code, "error_description": description }),
    )
}

/// The OAuth2 form: `grant_type=password` or `refresh_token`.
async fn post_token(State(state): State<TokenState>, request: Request) -> Response {
    let client = crate::client::client_address(&request);
    let body = match http_body_util::Limited::new(request.into_body(), MAX_FORM)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return oauth_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "the form is too large",
            );
        }
    };
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let value = |key: &str| form.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let login = match value("grant_type").as_deref() {
        Some("password") => match (value("username"), value("password")) {
            (Some(user), Some(password)) if !user.is_empty() => Login::Password { user, password },
            _ => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the password grant needs username and password",
                );
            }
        },
        Some("refresh_token") => match value("refresh_token") {
            Some(token) if !token.is_empty() => Login::Refresh(token),
            _ => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the refresh_token grant needs refresh_token",
                );
            }
        },
        Some(other) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("grant type {other:?} is not supported; use password or refresh_token"),
            );
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
            );
        }
    };
    let refreshing = matches!(login, Login::Refresh(_));
    let issued = state
        .issuer
        .issue(TokenRequest {
            login,
            service: value("service"),
            scopes: value("scope")
                .map(|s| ScopeEntry::parse_list(&s))
                .unwrap_or_default(),
            offline: !refreshing && value("access_type").as_deref() == Some("offline"),
            client,
        })
        .await;
    match issued {
        Ok(token) => {
            let mut answer = serde_json::json!({
                "access_token": token.token,
                "token": token.token,
                "scope": token.scope,
                "expires_in": token.expires_in,
                "issued_at": token.issued_at,
            });
            if let Some(refresh) = &token.refresh_token {
                answer["refresh_token"] = serde_json::Value::from(refresh.as_str());
            }
            json(StatusCode::OK, answer)
        }
        Err(e @ (IssueError::BadCredentials | IssueError::BadRefreshToken(_))) => {
            oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &e.to_string())
        }
        Err(e @ IssueError::TooManyAttempts(wait)) => {
            let mut response = oauth_error(
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_request",
                &e.to_string(),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            response
        }
        Err(e @ IssueError::UnknownService(_)) => {
            oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &e.to_string())
        }
        Err(e @ IssueError::Internal(_)) => {
            tracing::error!(error = %e, "token endpoint failed");
            oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the token could not be issued",
            )
        }
    }
}
