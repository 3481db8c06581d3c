//! Bearer token verification (`TokenVerifier::claims`, `grant`) with fixed test keys: no
//! string panics it, and a token accepted has the trusted issuer, this registry as audience,
//! times that hold, the kind (access or refresh) asked for, and grants exactly what its
//! `access` claim lists.
//!
//! The first byte picks how the rest becomes a token: as it is, or as a header and claims
//! (`header\0claims`) signed with the test key the header's `alg` names, with `exp`, `nbf`
//! and `iat` taken as it is or as seconds from now. Signed tokens get past the signature to
//! the claims' checks, which random strings never would.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use berth::auth::acl::Acl;
use berth::auth::bearer::{Audience, Claims, TokenVerifier};
use berth::auth::keys::{SigningKey, load_public_keys};
use berth::auth::{Access, Action, Grant};

use crate::input;

const ISSUER: &str = "berth";
const SERVICE: &str = "registry";
const LEEWAY: u64 = 10;
/// Seconds a run may take between two clock readings that a property compares.
const SLACK: u64 = 5;

struct Fixture {
    verifier: TokenVerifier,
    ed25519: SigningKey,
    p256: SigningKey,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("berth-fuzz-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let load = |path: &Path| SigningKey::load(path).unwrap();
        let ed25519 = load(&write(
            "ed25519.pem",
            include_str!("../../keys/ed25519.pem"),
        ));
        let p256 = load(&write("p256.pem", include_str!("../../keys/p256.pem")));
        let mut keys = vec![ed25519.verifying_key().unwrap()];
        keys.extend(
            load_public_keys(&write(
                "p256.pub.pem",
                include_str!("../../keys/p256.pub.pem"),
            ))
            .unwrap(),
        );
        std::fs::remove_dir_all(&dir).ok();
        let acl = Acl::parse(
            "[[rule]]\nrepository = \"${user}/**\"\nusers = [\"*\"]\nactions = [\"*\"]\n",
        )
        .unwrap();
        Fixture {
            verifier: TokenVerifier::new(keys, ISSUER, SERVICE, Some(Arc::new(acl))),
            ed25519,
            p256,
        }
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `exp`, `nbf` and `iat` as seconds from now.
fn relative_times(claims: &[u8]) -> Vec<u8> {
    let Ok(serde_json::Value::Object(mut map)) = serde_json::from_slice(claims) else {
        return claims.to_vec();
    };
    for key in ["exp", "nbf", "iat"] {
        if let Some(n) = map.get(key).and_then(serde_json::Value::as_i64) {
            map.insert(key.into(), (now() as i64).saturating_add(n).into());
        }
    }
    serde_json::to_vec(&map).unwrap()
}

fn signed(fixture: &Fixture, header: &[u8], claims: &[u8]) -> String {
    let alg = serde_json::from_slice::<serde_json::Value>(header)
        .ok()
        .and_then(|h| h.get("alg").and_then(|a| a.as_str()).map(str::to_owned));
    let key = match alg.as_deref() {
        Some("ES256") => &fixture.p256,
        _ => &fixture.ed25519,
    };
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn check_claims(claims: &Claims, refresh: bool) {
    let now = now();
    assert_eq!(claims.iss, ISSUER);
    match &claims.aud {
        Audience::One(aud) => assert_eq!(aud, SERVICE),
        Audience::Many(auds) => assert!(auds.iter().any(|a| a == SERVICE), "{auds:?}"),
    }
    assert!(
        claims.exp.saturating_add(LEEWAY + SLACK) >= now,
        "expired: {claims:?}"
    );
    if let Some(nbf) = claims.nbf {
        assert!(nbf <= now + LEEWAY + SLACK, "not yet valid: {claims:?}");
    }
    assert_eq!(claims.berth_refresh.is_some(), refresh);
}

/// Whether a refusal depends on the clock (the same token may pass a moment earlier).
fn about_time(message: &str) -> bool {
    message.contains("expired") || message.contains("not valid yet")
}

pub fn run(data: &[u8]) {
    let fixture = fixture();
    let (selector, rest) = input::selector(data);
    let refresh = selector & 1 == 1;
    let token = match (selector >> 1) % 3 {
        0 => match std::str::from_utf8(rest) {
            Ok(token) => token.to_owned(),
            Err(_) => return,
        },
        mode => {
            let parts = input::split(rest, 2);
            let header = parts[0];
            let claims = parts.get(1).copied().unwrap_or(b"");
            let claims = if mode == 2 {
                relative_times(claims)
            } else {
                claims.to_vec()
            };
            signed(fixture, header, &claims)
        }
    };
    let verifier = &fixture.verifier;

    match verifier.claims(&token, refresh) {
        Ok((claims, _own)) => check_claims(&claims, refresh),
        Err(e) => assert!(!e.0.is_empty()),
    }

    let access = verifier.claims(&token, false);
    let grant = verifier.grant(&token);
    match (&access, &grant) {
        (Ok((claims, _)), Err(e)) => assert!(
            about_time(&e.0) || claims.exp.saturating_add(LEEWAY) <= now() + SLACK,
            "verified, but no grant: {e}"
        ),
        (Err(e), Ok(_)) => assert!(about_time(&e.0), "a grant without a valid token: {e}"),
        _ => {}
    }
    let (Ok((claims, _)), Ok(grant)) = (access, grant) else {
        return;
    };
    assert_eq!(
        grant.subject(),
        (!claims.sub.is_empty()).then_some(claims.sub.as_str())
    );
    // The grant is the union of the access claim's entries.
    let mut catalog = false;
    for entry in &claims.access {
        match entry.kind.split('(').next().unwrap_or("") {
            "repository" => {
                for action in &entry.actions {
                    let granted: Vec<Action> = match action.as_str() {
                        "*" => Action::ALL.to_vec(),
                        other => Action::parse(other).into_iter().collect(),
                    };
                    for action in granted {
                        assert!(
                            grant.allows(&Access::repository(&entry.name, action)),
                            "{entry:?} grants {action:?}"
                        );
                    }
                }
            }
            "registry" if entry.name == "catalog" => {
                catalog |= entry.actions.iter().any(|a| a == "*");
            }
            _ => {}
        }
    }
    assert_eq!(
        grant.allows(&Access::catalog()),
        catalog,
        "catalog from {:?}",
        claims.access
    );
}
