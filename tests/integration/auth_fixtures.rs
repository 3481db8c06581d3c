//! What the access-control tests share (`auth.rs`, `auth_clients.rs`, `faults.rs`): the users,
//! the ACL and the files Berth reads, clients that carry credentials, and tokens: asked from
//! the built-in issuer, or signed here as an external issuer would.

use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::Method;

use crate::util::*;

pub const ACL: &str = r#"
[[rule]]
repository = "public/**"
users = ["anonymous", "*"]
actions = ["pull"]

[[rule]]
repository = "${user}/**"
users = ["*"]
actions = ["*"]

[[rule]]
repository = "team/*"
users = ["alice"]
actions = ["pull", "push"]

[[rule]]
repository = "**"
users = ["admin"]
actions = ["*"]

[[rule]]
catalog = true
users = ["admin", "alice"]
"#;

pub const USERS: &[(&str, &str)] = &[
    ("alice", "alice-Secret-1"),
    ("bob", "bob-Secret-2"),
    ("admin", "admin-Secret-3"),
];

/// The files access control reads, in a directory that lives as long as the test.
pub struct AuthFiles {
    pub dir: tempfile::TempDir,
    pub key: EcdsaKeyPair,
}

impl AuthFiles {
    pub fn new() -> AuthFiles {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd: String = USERS
            .iter()
            .map(|(user, password)| {
                // `htpasswd -B` writes $2y$; the cost is low to keep tests fast.
                let hash = bcrypt::hash(password, 5)
                    .unwrap()
                    .replacen("$2b$", "$2y$", 1);
                format!("{user}:{hash}\n")
            })
            .collect();
        std::fs::write(dir.path().join("htpasswd"), htpasswd).unwrap();
        std::fs::write(dir.path().join("acl.toml"), ACL).unwrap();
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        std::fs::write(
            dir.path().join("token-key.pem"),
            pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec())),
        )
        .unwrap();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        AuthFiles { dir, key }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    pub fn basic_settings(&self) -> Vec<(String, String)> {
        vec![
            ("BERTH_AUTH".into(), "basic".into()),
            ("BERTH_AUTH_HTPASSWD".into(), self.path("htpasswd")),
            ("BERTH_AUTH_ACL".into(), self.path("acl.toml")),
        ]
    }

    pub fn token_settings(&self) -> Vec<(String, String)> {
        vec![
            ("BERTH_AUTH".into(), "token".into()),
            ("BERTH_AUTH_HTPASSWD".into(), self.path("htpasswd")),
            ("BERTH_AUTH_ACL".into(), self.path("acl.toml")),
            ("BERTH_AUTH_TOKEN_KEY".into(), self.path("token-key.pem")),
        ]
    }
}

pub fn start_with_owned(settings: &[(String, String)]) -> Server {
    let borrowed: Vec<(&str, &str)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    Server::start_with(&borrowed)
}

pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

pub fn password_of(user: &str) -> &'static str {
    USERS.iter().find(|(u, _)| *u == user).unwrap().1
}

/// A client that sends the same `Authorization` with every request.
pub fn authorized(server: &Server, authorization: &str) -> Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(authorization).unwrap(),
    );
    Client {
        base: format!("http://{}", server.addr),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(headers)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
    }
}

/// A token request to the built-in issuer; returns the JSON answer.
pub async fn token(server: &Server, user: Option<&str>, scopes: &[&str]) -> serde_json::Value {
    let c = server.client();
    let mut request = c
        .request(Method::GET, "/token")
        .query(&[("service", "berth")]);
    for scope in scopes {
        request = request.query(&[("scope", scope)]);
    }
    if let Some(user) = user {
        request = request.header("authorization", basic(user, password_of(user)));
    }
    let a = c.send(request).await;
    a.expect(200, None);
    assert_eq!(a.header("cache-control"), Some("no-store"));
    a.json()
}

pub fn bearer(server: &Server, token: &serde_json::Value) -> Client {
    authorized(
        server,
        &format!("Bearer {}", token["token"].as_str().expect("a token")),
    )
}

pub fn claims_of(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// A JWT with these header and claims, signed with `key` (ES256).
pub fn signed(key: &EcdsaKeyPair, header: serde_json::Value, claims: serde_json::Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn claims(
    aud: &str,
    iss: &str,
    exp: u64,
    nbf: u64,
    access: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "iss": iss, "sub": "alice", "aud": aud, "exp": exp, "nbf": nbf, "iat": nbf,
        "jti": "x", "access": access
    })
}
