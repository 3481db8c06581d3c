//! Access control over HTTP: Basic authentication with an htpasswd file and an ACL, Docker
//! token authentication with the built-in issuer and with an external one, and the negative
//! matrix (every endpoint without credentials, with too little access, with bad tokens).

use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Method;

use crate::auth_fixtures::*;
use crate::util::*;

/// Every endpoint of the API on repository `repo`: method, path, body.
fn endpoints(repo: &str, digest: &str, upload: &str) -> Vec<(Method, String, Vec<u8>)> {
    vec![
        (Method::GET, format!("/v2/{repo}/tags/list"), vec![]),
        (Method::GET, format!("/v2/{repo}/manifests/v1"), vec![]),
        (Method::HEAD, format!("/v2/{repo}/manifests/v1"), vec![]),
        (
            Method::PUT,
            format!("/v2/{repo}/manifests/v1"),
            b"{}".to_vec(),
        ),
        (Method::DELETE, format!("/v2/{repo}/manifests/v1"), vec![]),
        (Method::GET, format!("/v2/{repo}/blobs/{digest}"), vec![]),
        (Method::HEAD, format!("/v2/{repo}/blobs/{digest}"), vec![]),
        (Method::DELETE, format!("/v2/{repo}/blobs/{digest}"), vec![]),
        (Method::POST, format!("/v2/{repo}/blobs/uploads/"), vec![]),
        (
            Method::GET,
            format!("/v2/{repo}/blobs/uploads/{upload}"),
            vec![],
        ),
        (
            Method::PATCH,
            format!("/v2/{repo}/blobs/uploads/{upload}"),
            b"x".to_vec(),
        ),
        (
            Method::PUT,
            format!("/v2/{repo}/blobs/uploads/{upload}?digest={digest}"),
            vec![],
        ),
        (
            Method::DELETE,
            format!("/v2/{repo}/blobs/uploads/{upload}"),
            vec![],
        ),
        (
            Method::GET,
            format!("/v2/{repo}/referrers/{digest}"),
            vec![],
        ),
    ]
}

fn action_of(method: &Method, path: &str) -> &'static str {
    if path.contains("/blobs/uploads/") || (method == Method::PUT && path.contains("/manifests/")) {
        "push"
    } else if method == Method::DELETE {
        "delete"
    } else {
        "pull"
    }
}

/// Calls every endpoint on `alice/app` (`layer`, and an upload `alice` opens) as `anonymous`,
/// who must get 401, and as `bob`, who must get 403; `check` looks further at both answers.
async fn refused_everywhere(
    alice: &Client,
    anonymous: &Client,
    bob: &Client,
    layer: &str,
    check: impl Fn(&Method, &str, &Answer, &Answer),
) {
    let location = alice.start_upload("alice/app").await;
    let upload = location.rsplit('/').next().unwrap().to_owned();
    for (method, path, body) in endpoints("alice/app", layer, &upload) {
        let a = anonymous
            .send(anonymous.request(method.clone(), &path).body(body.clone()))
            .await;
        assert_eq!(a.status.as_u16(), 401, "anonymous {method} {path}");
        let b = bob
            .send(bob.request(method.clone(), &path).body(body))
            .await;
        assert_eq!(b.status.as_u16(), 403, "bob {method} {path}");
        check(&method, &path, &a, &b);
    }
}

async fn basic_auth_challenges_refuses_and_follows_the_acl() {
    let files = AuthFiles::new();
    let server = start_with_owned(&files.basic_settings());
    let anonymous = server.client();
    let alice = authorized(&server, &basic("alice", password_of("alice")));
    let bob = authorized(&server, &basic("bob", password_of("bob")));
    let admin = authorized(&server, &basic("admin", password_of("admin")));

    // The API version check asks for credentials (it is how clients learn to log in).
    let a = anonymous.get("/v2/").await;
    a.expect(401, Some("UNAUTHORIZED"));
    assert_eq!(a.header("www-authenticate"), Some("Basic realm=\"berth\""));
    alice.get("/v2/").await.expect(200, None);
    let wrong = authorized(&server, &basic("alice", "not her password"));
    wrong.get("/v2/").await.expect(401, Some("UNAUTHORIZED"));
    authorized(&server, "Basic !!!")
        .get("/v2/")
        .await
        .expect(401, None);

    // Alice pushes to her namespace; the blob is only readable where it is linked.
    let image = alice.push_image("alice/app", "v1", unique_seed()).await;
    let layer = sha256(&image.layer);
    alice
        .get(&format!("/v2/alice/other/blobs/{layer}"))
        .await
        .expect(404, None);

    // Every endpoint: anonymous gets 401 with the challenge, Bob (valid, no access) 403.
    refused_everywhere(&alice, &anonymous, &bob, &layer, |method, path, a, b| {
        assert_eq!(a.header("www-authenticate"), Some("Basic realm=\"berth\""));
        if method != Method::HEAD {
            assert_eq!(a.error_code(), "UNAUTHORIZED");
            let detail = &a.json()["errors"][0]["detail"][0];
            assert_eq!(detail["Name"], "alice/app");
            assert_eq!(detail["Action"], action_of(method, path), "{method} {path}");
            assert_eq!(b.error_code(), "DENIED");
        }
    })
    .await;
    anonymous
        .get("/v2/_catalog")
        .await
        .expect(401, Some("UNAUTHORIZED"));
    bob.get("/v2/_catalog").await.expect(403, Some("DENIED"));

    // Anonymous callers pull public images but push nothing.
    admin
        .push_image("public/base", "latest", unique_seed())
        .await;
    anonymous
        .get("/v2/public/base/manifests/latest")
        .await
        .expect(200, None);
    anonymous
        .call(Method::POST, "/v2/public/base/blobs/uploads/")
        .await
        .expect(401, Some("UNAUTHORIZED"));
    bob.call(Method::POST, "/v2/public/base/blobs/uploads/")
        .await
        .expect(403, Some("DENIED"));

    // Alice may push to team repositories but not delete there.
    let team = alice.push_image("team/tool", "v1", unique_seed()).await;
    alice
        .call(
            Method::DELETE,
            &format!("/v2/team/tool/manifests/{}", team.digest),
        )
        .await
        .expect(403, Some("DENIED"));
    alice
        .call(Method::DELETE, "/v2/alice/app/manifests/v1")
        .await
        .expect(202, None);

    // The catalog lists what the caller may pull.
    bob.push_image("bob/x", "v1", unique_seed()).await;
    let listed = |a: Answer| -> Vec<String> {
        a.expect(200, None);
        a.json()["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect()
    };
    let seen = listed(alice.get("/v2/_catalog").await);
    assert_eq!(seen, vec!["alice/app", "public/base", "team/tool"]);
    let everything = listed(admin.get("/v2/_catalog").await);
    assert_eq!(
        everything,
        vec!["alice/app", "bob/x", "public/base", "team/tool"]
    );
    // Pages stay exact when names are skipped.
    let page = alice.get("/v2/_catalog?n=1&last=alice/app").await;
    assert_eq!(listed(page), vec!["public/base"]);

    // Mounting: only from a repository the caller may pull; otherwise a plain upload.
    let mount = |c: &Client, to: &str, from: Option<&str>| {
        let path = match from {
            Some(from) => format!("/v2/{to}/blobs/uploads/?mount={layer}&from={from}"),
            None => format!("/v2/{to}/blobs/uploads/?mount={layer}"),
        };
        let c = c.clone();
        async move { c.call(Method::POST, &path).await.status.as_u16() }
    };
    assert_eq!(mount(&bob, "bob/stolen", Some("alice/app")).await, 202);
    assert_eq!(mount(&bob, "bob/stolen", None).await, 202);
    bob.get(&format!("/v2/bob/stolen/blobs/{layer}"))
        .await
        .expect(404, None);
    assert_eq!(mount(&alice, "alice/copy", Some("alice/app")).await, 201);
    alice
        .get_following(&format!("/v2/alice/copy/blobs/{layer}"))
        .await
        .expect(200, None);

    // Failed logins are limited per client: ten in a row, then 429 with Retry-After.
    let mut limited = None;
    for _ in 0..15 {
        let a = wrong.get("/v2/").await;
        if a.status.as_u16() == 429 {
            limited = Some(a);
            break;
        }
        a.expect(401, None);
    }
    let limited = limited.expect("failed logins are rate-limited");
    assert!(limited.header("retry-after").is_some());
    assert_eq!(limited.error_code(), "TOOMANYREQUESTS");

    // Passwords never reach the log.
    let log = server.log_text();
    for (_, password) in USERS {
        assert!(!log.contains(password), "a password appears in the log");
    }
    assert!(
        log.contains("failed login"),
        "failed logins are logged (without the password)"
    );
}

async fn token_auth_with_the_built_in_issuer() {
    let files = AuthFiles::new();
    let server = start_with_owned(&files.token_settings());
    let anonymous = server.client();
    let realm = format!("http://{}/token", server.addr);

    let a = anonymous.get("/v2/").await;
    a.expect(401, Some("UNAUTHORIZED"));
    assert_eq!(
        a.header("www-authenticate").unwrap(),
        format!("Bearer realm=\"{realm}\",service=\"berth\"")
    );
    let a = anonymous.get("/v2/alice/app/manifests/v1").await;
    a.expect(401, Some("UNAUTHORIZED"));
    assert_eq!(
        a.header("www-authenticate").unwrap(),
        format!("Bearer realm=\"{realm}\",service=\"berth\",scope=\"repository:alice/app:pull\"")
    );

    // Alice gets what she asks for and the ACL allows, and pushes with it.
    let t = token(
        &server,
        Some("alice"),
        &["repository:alice/app:pull,push,delete"],
    )
    .await;
    assert!(t["expires_in"].as_u64().unwrap() >= 60);
    assert!(t["issued_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(t["token"], t["access_token"]);
    let access = &claims_of(t["token"].as_str().unwrap())["access"];
    assert_eq!(
        access,
        &serde_json::json!([{"type": "repository", "name": "alice/app", "actions": ["pull", "push", "delete"]}])
    );
    let alice = bearer(&server, &t);
    alice.get("/v2/").await.expect(200, None);
    let image = alice.push_image("alice/app", "v1", unique_seed()).await;
    alice
        .get("/v2/alice/app/manifests/v1")
        .await
        .expect(200, None);
    // The same token does not reach other repositories.
    let a = alice.get("/v2/team/tool/tags/list").await;
    a.expect(403, Some("DENIED"));
    assert!(
        a.header("www-authenticate")
            .unwrap()
            .contains("error=\"insufficient_scope\"")
    );

    // Bob asks for Alice's repository and gets a token without it: 403.
    let t = token(&server, Some("bob"), &["repository:alice/app:pull"]).await;
    assert_eq!(
        claims_of(t["token"].as_str().unwrap())["access"],
        serde_json::json!([])
    );
    let layer = sha256(&image.layer);
    let bob = bearer(&server, &t);
    refused_everywhere(&alice, &anonymous, &bob, &layer, |method, path, a, _| {
        let challenge = a.header("www-authenticate").unwrap();
        assert!(
            challenge.ends_with(&format!(
                "scope=\"repository:alice/app:{}\"",
                action_of(method, path)
            )),
            "{method} {path}: {challenge}"
        );
    })
    .await;

    // Anonymous tokens pull public images, nothing else.
    let admin = bearer(
        &server,
        &token(
            &server,
            Some("admin"),
            &["repository:public/base:push,pull"],
        )
        .await,
    );
    admin
        .push_image("public/base", "latest", unique_seed())
        .await;
    let t = token(&server, None, &["repository:public/base:pull,push"]).await;
    assert_eq!(
        claims_of(t["token"].as_str().unwrap())["access"],
        serde_json::json!([{"type": "repository", "name": "public/base", "actions": ["pull"]}])
    );
    let anon = bearer(&server, &t);
    anon.get("/v2/public/base/manifests/latest")
        .await
        .expect(200, None);
    anon.call(Method::POST, "/v2/public/base/blobs/uploads/")
        .await
        .expect(401, Some("UNAUTHORIZED"));

    // The catalog: registry:catalog:* for those the ACL lets list it, showing what they pull.
    let t = token(&server, Some("alice"), &["registry:catalog:*"]).await;
    let listing = bearer(&server, &t).get("/v2/_catalog").await;
    listing.expect(200, None);
    assert_eq!(
        listing.json()["repositories"],
        serde_json::json!(["alice/app", "public/base"])
    );
    let t = token(&server, Some("bob"), &["registry:catalog:*"]).await;
    bearer(&server, &t)
        .get("/v2/_catalog")
        .await
        .expect(403, Some("DENIED"));

    // Wrong credentials, refresh tokens, and the OAuth2 form.
    let c = server.client();
    let a = c
        .send(
            c.request(Method::GET, "/token")
                .query(&[("service", "berth")])
                .header("authorization", basic("alice", "wrong")),
        )
        .await;
    a.expect(401, Some("UNAUTHORIZED"));
    assert!(a.header("www-authenticate").unwrap().starts_with("Basic"));
    let a = c
        .send(
            c.request(Method::GET, "/token")
                .query(&[("service", "another-registry")]),
        )
        .await;
    assert_eq!(a.status.as_u16(), 400);
    let a = c
        .send(
            c.request(Method::GET, "/token")
                .query(&[("service", "berth"), ("offline_token", "true")])
                .header("authorization", basic("alice", password_of("alice"))),
        )
        .await;
    a.expect(200, None);
    let refresh = a.json()["refresh_token"].as_str().unwrap().to_owned();
    // A refresh token is not an access token.
    authorized(&server, &format!("Bearer {refresh}"))
        .get("/v2/")
        .await
        .expect(401, Some("UNAUTHORIZED"));
    let a = post_form(
        &c,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("service", "berth"),
            ("client_id", "test"),
            ("scope", "repository:alice/app:pull"),
        ],
    )
    .await;
    a.expect(200, None);
    assert_eq!(a.json()["scope"], "repository:alice/app:pull");
    let from_refresh = a.json();
    bearer(&server, &from_refresh)
        .get("/v2/alice/app/tags/list")
        .await
        .expect(200, None);
    let a = post_form(
        &c,
        &[
            ("grant_type", "password"),
            ("username", "bob"),
            ("password", password_of("bob")),
            ("service", "berth"),
            ("client_id", "test"),
            ("access_type", "offline"),
            ("scope", "repository:bob/x:pull,push"),
        ],
    )
    .await;
    a.expect(200, None);
    assert!(a.json()["refresh_token"].is_string());
    assert_eq!(a.json()["scope"], "repository:bob/x:pull,push");
    let a = post_form(
        &c,
        &[
            ("grant_type", "password"),
            ("username", "bob"),
            ("password", "wrong"),
            ("service", "berth"),
        ],
    )
    .await;
    assert_eq!(a.status.as_u16(), 400);
    assert_eq!(a.json()["error"], "invalid_grant");
    let a = post_form(&c, &[("grant_type", "authorization_code")]).await;
    assert_eq!(a.json()["error"], "unsupported_grant_type");

    // Changing the password revokes refresh tokens.
    let htpasswd = std::fs::read_to_string(files.path("htpasswd")).unwrap();
    let changed: String = htpasswd
        .lines()
        .map(|l| {
            if l.starts_with("alice:") {
                format!("alice:{}", bcrypt::hash("new-password", 5).unwrap())
            } else {
                l.to_owned()
            }
        })
        .map(|l| l + "\n")
        .collect();
    std::fs::write(files.path("htpasswd"), changed).unwrap();
    eventually(
        "the htpasswd change is seen",
        Duration::from_secs(15),
        async || {
            let a = post_form(
                &c,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &refresh),
                    ("service", "berth"),
                ],
            )
            .await;
            a.status.as_u16() == 400
        },
    )
    .await;

    // Tokens never reach the log.
    let log = server.log_text();
    assert!(
        !log.contains(&refresh),
        "a refresh token appears in the log"
    );
    assert!(
        !log.contains(from_refresh["token"].as_str().unwrap()),
        "an access token appears in the log"
    );
}

/// POSTs `pairs` to the token endpoint as a form (the OAuth2 flavour of token requests).
async fn post_form(c: &Client, pairs: &[(&str, &str)]) -> Answer {
    c.send(
        c.request(Method::POST, "/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(pairs)),
    )
    .await
}

fn form_body(pairs: &[(&str, &str)]) -> String {
    let mut form = String::new();
    for (k, v) in pairs {
        if !form.is_empty() {
            form.push('&');
        }
        form.push_str(k);
        form.push('=');
        form.push_str(&percent(v));
    }
    form
}

fn percent(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn bad_tokens_are_refused() {
    let files = AuthFiles::new();
    let server = start_with_owned(&files.token_settings());
    let access = serde_json::json!([{"type": "repository", "name": "alice/app", "actions": ["pull", "push"]}]);
    let header = serde_json::json!({"alg": "ES256", "typ": "JWT"});
    // A token signed with `key` for audience `aud` from issuer `iss`, valid from `nbf` to `exp`.
    let jwt = |key: &EcdsaKeyPair, aud: &str, iss: &str, exp: u64, nbf: u64| {
        signed(
            key,
            header.clone(),
            claims(aud, iss, exp, nbf, access.clone()),
        )
    };
    let good = jwt(&files.key, "berth", "berth", now() + 300, now());
    authorized(&server, &format!("Bearer {good}"))
        .call(Method::POST, "/v2/alice/app/blobs/uploads/")
        .await
        .expect(202, None);

    let rng = SystemRandom::new();
    let other = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let other = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, other.as_ref()).unwrap();
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(serde_json::json!({"alg": "none", "typ": "JWT"}).to_string()),
        URL_SAFE_NO_PAD
            .encode(claims("berth", "berth", now() + 300, now(), access.clone()).to_string())
    );
    // HS256 keyed with the public key: the classic algorithm confusion.
    let hs256 = {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::json!({"alg": "HS256", "typ": "JWT"}).to_string()),
            URL_SAFE_NO_PAD
                .encode(claims("berth", "berth", now() + 300, now(), access.clone()).to_string())
        );
        let key = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            files.key.public_key().as_der().unwrap().as_ref(),
        );
        let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    };
    let mut tampered = good.clone();
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    let cases = [
        (
            "expired",
            jwt(&files.key, "berth", "berth", now() - 120, now() - 400),
        ),
        (
            "not yet valid",
            jwt(&files.key, "berth", "berth", now() + 600, now() + 300),
        ),
        (
            "wrong audience",
            jwt(&files.key, "another-registry", "berth", now() + 300, now()),
        ),
        (
            "wrong issuer",
            jwt(&files.key, "berth", "somebody", now() + 300, now()),
        ),
        (
            "wrong signature",
            jwt(&other, "berth", "berth", now() + 300, now()),
        ),
        ("tampered", tampered),
        ("alg none", unsigned),
        ("HS256 with the public key", hs256),
        ("garbage", "not.a.token".to_owned()),
    ];
    for (what, token) in cases {
        let a = authorized(&server, &format!("Bearer {token}"))
            .call(Method::POST, "/v2/alice/app/blobs/uploads/")
            .await;
        assert_eq!(
            a.status.as_u16(),
            401,
            "{what}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(a.error_code(), "UNAUTHORIZED", "{what}");
        assert!(
            a.header("www-authenticate")
                .unwrap()
                .contains("error=\"invalid_token\""),
            "{what}"
        );
    }
}

async fn tokens_of_an_external_issuer_are_verified_with_its_keys() {
    let files = AuthFiles::new();
    // The external service's public key, as PEM and as a JWKS with a key id.
    let spki = files.key.public_key().as_der().unwrap();
    std::fs::write(
        files.path("issuer.pem"),
        pem::encode(&pem::Pem::new("PUBLIC KEY", spki.as_ref().to_vec())),
    )
    .unwrap();
    let point = files.key.public_key().as_ref();
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "external-1", "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..]),
    }]});
    std::fs::write(files.path("jwks.json"), jwks.to_string()).unwrap();
    let access =
        serde_json::json!([{"type": "repository", "name": "ext/*", "actions": ["pull", "push"]}]);
    // A token the external service signs, naming its key `kid`.
    let external = |kid: &str| {
        signed(
            &files.key,
            serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid}),
            claims(
                "registry.example.com",
                "auth.example.com",
                now() + 300,
                now(),
                access.clone(),
            ),
        )
    };
    for (setting, file) in [
        ("BERTH_AUTH_TOKEN_PUBLIC_KEYS", "issuer.pem"),
        ("BERTH_AUTH_TOKEN_JWKS", "jwks.json"),
    ] {
        let server = start_with_owned(&[
            ("BERTH_AUTH".into(), "token".into()),
            (setting.into(), files.path(file)),
            (
                "BERTH_AUTH_REALM".into(),
                "https://auth.example.com/token".into(),
            ),
            ("BERTH_AUTH_SERVICE".into(), "registry.example.com".into()),
            ("BERTH_AUTH_TOKEN_ISSUER".into(), "auth.example.com".into()),
        ]);
        let a = server.client().get("/v2/ext/app/tags/list").await;
        a.expect(401, None);
        assert_eq!(
            a.header("www-authenticate").unwrap(),
            "Bearer realm=\"https://auth.example.com/token\",service=\"registry.example.com\",scope=\"repository:ext/app:pull\""
        );
        server.client().get("/token").await.expect(404, None);
        let token = external("external-1");
        let c = authorized(&server, &format!("Bearer {token}"));
        c.push_image("ext/app", "v1", unique_seed()).await;
        c.get("/v2/ext/app/manifests/v1").await.expect(200, None);
        c.get("/v2/other/app/tags/list")
            .await
            .expect(403, Some("DENIED"));
        if setting == "BERTH_AUTH_TOKEN_JWKS" {
            // A key id the JWKS does not have is not tried.
            let token = external("unknown");
            authorized(&server, &format!("Bearer {token}"))
                .get("/v2/")
                .await
                .expect(401, None);
        }
    }
}

async fn presigned_redirects_need_authorization_first() {
    let files = AuthFiles::new();
    let server = start_with_owned(&files.basic_settings());
    let alice = authorized(&server, &basic("alice", password_of("alice")));
    let image = alice.push_image("alice/app", "v1", unique_seed()).await;
    let path = format!("/v2/alice/app/blobs/{}", sha256(&image.layer));
    let a = server.client().get(&path).await;
    a.expect(401, None);
    assert!(
        a.header("location").is_none(),
        "no redirect before authorization"
    );
    let got = alice.get_following(&path).await;
    got.expect(200, None);
    assert_eq!(&got.body[..], &image.layer[..]);
}

crate::harness::trials! {
    basic_auth_challenges_refuses_and_follows_the_acl;
    token_auth_with_the_built_in_issuer;
    bad_tokens_are_refused;
    tokens_of_an_external_issuer_are_verified_with_its_keys;
    presigned_redirects_need_authorization_first;
}
