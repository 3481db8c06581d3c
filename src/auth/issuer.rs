//! Berth's own token issuer, so that one Berth is a complete secure registry: clients send
//! their htpasswd credentials (or a refresh token) to `/token` and get a short-lived JWT
//! granting what they asked for, as far as the ACL allows.
//!
//! Refresh tokens (`offline_token=true`, or `access_type=offline` in the OAuth2 form) are JWTs
//! signed with the same key, marked so the registry refuses them as access tokens, and bound to
//! the user's password hash: changing the password, or removing the user, revokes them. No
//! state is kept, so every replica with the key issues and accepts the same tokens.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::acl::Acl;
use super::bearer::{AccessEntry, Audience, Claims, TokenVerifier};
use super::htpasswd::Htpasswd;
use super::keys::{SigningKey, b64};
use super::limiter::LoginLimiter;
use super::scope::{Action, ScopeEntry};
use crate::oci::RepositoryName;

/// How a token request identifies its caller.
#[derive(Clone, Debug)]
pub enum Login {
    /// No credentials: what the ACL gives `anonymous`.
    Anonymous,
    /// A user and password.
    Password {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// A refresh token from an earlier request.
    Refresh(String),
}

/// A request for a token.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// Who asks.
    pub login: Login,
    /// The `service` asked for, if given; it must be this registry's.
    pub service: Option<String>,
    /// The scopes asked for.
    pub scopes: Vec<ScopeEntry>,
    /// Whether a refresh token is wanted too.
    pub offline: bool,
    /// The client's address, for the failed-login limit.
    pub client: Option<IpAddr>,
}

/// A token issued.
#[derive(Clone, Debug, Serialize)]
pub struct IssuedToken {
    /// The access token.
    pub token: String,
    /// Its lifetime in seconds.
    pub expires_in: u64,
    /// When it was issued (RFC 3339, UTC).
    pub issued_at: String,
    /// A refresh token, when asked for.
    pub refresh_token: Option<String>,
    /// The scopes granted, space-separated.
    pub scope: String,
}

/// Why no token was issued.
#[derive(Clone, Debug, thiserror::Error)]
pub enum IssueError {
    /// Wrong user name or password.
    #[error("the user name or password is wrong")]
    BadCredentials,
    /// Too many failed logins from this client.
    #[error("too many failed logins; retry in {0} s")]
    TooManyAttempts(u64),
    /// The token is for another service.
    #[error("unknown service {0:?}")]
    UnknownService(String),
    /// The refresh token is not valid.
    #[error("the refresh token is not valid: {0}")]
    BadRefreshToken(String),
    /// Signing failed.
    #[error("could not sign the token: {0}")]
    Internal(String),
}

/// Settings of a [`TokenIssuer`].
#[derive(Clone, Debug)]
pub struct IssuerSettings {
    /// The `iss` claim.
    pub issuer: String,
    /// The `aud` claim and the service clients name.
    pub service: String,
    /// Lifetime of access tokens (at least 60 s, as clients expect).
    pub lifetime: Duration,
    /// Lifetime of refresh tokens.
    pub refresh_lifetime: Duration,
}

/// Issues tokens for htpasswd users under an ACL.
pub struct TokenIssuer {
    key: SigningKey,
    settings: IssuerSettings,
    htpasswd: Arc<Htpasswd>,
    acl: Arc<Acl>,
    limiter: Arc<LoginLimiter>,
    verifier: Arc<TokenVerifier>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("key", &self.key)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn fingerprint(hash: &str) -> String {
    b64(&Sha256::digest(hash.as_bytes())[..12])
}

impl TokenIssuer {
    /// An issuer signing with `key`. `verifier` must trust `key`; it checks refresh tokens.
    pub fn new(
        key: SigningKey,
        settings: IssuerSettings,
        htpasswd: Arc<Htpasswd>,
        acl: Arc<Acl>,
        limiter: Arc<LoginLimiter>,
        verifier: Arc<TokenVerifier>,
    ) -> TokenIssuer {
        TokenIssuer {
            key,
            settings,
            htpasswd,
            acl,
            limiter,
            verifier,
        }
    }

    /// The service tokens are issued for.
    pub fn service(&self) -> &str {
        &self.settings.service
    }

    fn sign(&self, claims: &Claims) -> Result<String, IssueError> {
        let header = serde_json::json!({
            "alg": format!("{:?}", self.key.algorithm()),
            "typ": "JWT",
            "kid": self.key.kid(),
        });
        let header =
            serde_json::to_vec(&header).map_err(|e| IssueError::Internal(e.to_string()))?;
        let claims = serde_json::to_vec(claims).map_err(|e| IssueError::Internal(e.to_string()))?;
        let input = format!("{}.{}", b64(&header), b64(&claims));
        let signature = self
            .key
            .sign(input.as_bytes())
            .map_err(IssueError::Internal)?;
        Ok(format!("{input}.{}", b64(&signature)))
    }

    /// What `user` gets of `scopes`: the requested actions the ACL allows.
    fn grant(&self, user: Option<&str>, scopes: &[ScopeEntry]) -> Vec<AccessEntry> {
        let mut granted: Vec<AccessEntry> = Vec::new();
        for scope in scopes {
            let actions: Vec<String> = match scope.kind.as_str() {
                "repository" if RepositoryName::parse(&scope.name).is_ok() => {
                    let allowed = self.acl.actions(user, &scope.name);
                    let mut actions: Vec<String> = Vec::new();
                    for a in &scope.actions {
                        let wanted: Vec<Action> = match a.as_str() {
                            "*" => Action::ALL.to_vec(),
                            other => Action::parse(other).into_iter().collect(),
                        };
                        for action in wanted {
                            if allowed.contains(action)
                                && !actions.iter().any(|x| x == action.as_str())
                            {
                                actions.push(action.as_str().to_owned());
                            }
                        }
                    }
                    actions
                }
                "registry" if scope.name == "catalog" && self.acl.catalog(user) => scope
                    .actions
                    .iter()
                    .filter(|a| *a == "*")
                    .take(1)
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            if actions.is_empty() {
                continue;
            }
            match granted
                .iter_mut()
                .find(|e| e.kind == scope.kind && e.name == scope.name)
            {
                Some(entry) => {
                    for a in actions {
                        if !entry.actions.contains(&a) {
                            entry.actions.push(a);
                        }
                    }
                }
                None => granted.push(AccessEntry {
                    kind: scope.kind.clone(),
                    name: scope.name.clone(),
                    actions,
                }),
            }
        }
        granted
    }

    /// Authenticates the request and issues a token with what it may have of its scopes.
    pub async fn issue(&self, request: TokenRequest) -> Result<IssuedToken, IssueError> {
        if let Some(service) = &request.service
            && service != &self.settings.service
        {
            return Err(IssueError::UnknownService(service.clone()));
        }
        let (user, refresh_token) = match request.login {
            Login::Anonymous => (None, None),
            Login::Password { user, password } => {
                if let Err(wait) = self.limiter.check(request.client) {
                    return Err(IssueError::TooManyAttempts(wait));
                }
                if !self.htpasswd.verify(&user, &password).await {
                    self.limiter.failed(request.client);
                    tracing::warn!(user, client = ?request.client, "failed login at the token endpoint");
                    return Err(IssueError::BadCredentials);
                }
                let refresh = if request.offline {
                    Some(self.refresh_token(&user)?)
                } else {
                    None
                };
                (Some(user), refresh)
            }
            Login::Refresh(token) => {
                let (claims, own) = self
                    .verifier
                    .claims(&token, true)
                    .map_err(|e| IssueError::BadRefreshToken(e.0))?;
                let current = (!claims.sub.is_empty())
                    .then(|| self.htpasswd.hash_of(&claims.sub))
                    .flatten();
                match (own, current, &claims.berth_refresh) {
                    (true, Some(hash), Some(print)) if fingerprint(&hash) == *print => {}
                    (true, None, _) => {
                        return Err(IssueError::BadRefreshToken(format!(
                            "user {:?} no longer exists",
                            claims.sub
                        )));
                    }
                    (true, _, _) => {
                        return Err(IssueError::BadRefreshToken(
                            "the password changed since it was issued".to_owned(),
                        ));
                    }
                    (false, _, _) => {
                        return Err(IssueError::BadRefreshToken(
                            "it was not issued here".to_owned(),
                        ));
                    }
                }
                (Some(claims.sub), Some(token))
            }
        };
        let access = self.grant(user.as_deref(), &request.scopes);
        let now = super::unix_now();
        let lifetime = self.settings.lifetime.as_secs().max(60);
        let claims = Claims {
            iss: self.settings.issuer.clone(),
            sub: user.clone().unwrap_or_default(),
            aud: Audience::One(self.settings.service.clone()),
            exp: now + lifetime,
            nbf: Some(now),
            iat: Some(now),
            jti: Some(uuid::Uuid::new_v4().simple().to_string()),
            access: access.clone(),
            berth_refresh: None,
        };
        let token = self.sign(&claims)?;
        let scope = access
            .iter()
            .map(|e| format!("{}:{}:{}", e.kind, e.name, e.actions.join(",")))
            .collect::<Vec<_>>()
            .join(" ");
        Ok(IssuedToken {
            token,
            expires_in: lifetime,
            issued_at: crate::timestamps::rfc3339(i64::try_from(now).unwrap_or(i64::MAX)),
            refresh_token,
            scope,
        })
    }

    fn refresh_token(&self, user: &str) -> Result<String, IssueError> {
        let hash = self
            .htpasswd
            .hash_of(user)
            .ok_or(IssueError::BadCredentials)?;
        let now = super::unix_now();
        self.sign(&Claims {
            iss: self.settings.issuer.clone(),
            sub: user.to_owned(),
            aud: Audience::One(self.settings.service.clone()),
            exp: now + self.settings.refresh_lifetime.as_secs(),
            nbf: Some(now),
            iat: Some(now),
            jti: Some(uuid::Uuid::new_v4().simple().to_string()),
            access: Vec::new(),
            berth_refresh: Some(fingerprint(&hash)),
        })
    }
}
