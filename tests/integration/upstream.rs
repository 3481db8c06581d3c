//! The client a mirror reads upstream registries with, against real registries: a Berth in
//! token mode over TLS with a private CA (Docker Hub's challenge flow), and one in Basic mode
//! over plain HTTP. Answers are checked (digests, sizes) and failures named.

use std::time::Duration;

use berth::oci::Digest;
use berth::upstream::{
    Credentials, ManifestRequest, UpstreamClient, UpstreamError, UpstreamSettings,
};
use futures::StreamExt;

use crate::auth_fixtures::{AuthFiles, USERS};
use crate::tls::TlsSetup;
use crate::util::*;

fn settings(url: String) -> UpstreamSettings {
    UpstreamSettings {
        name: "origin".into(),
        url,
        prefix: Some("origin".into()),
        default: false,
        credentials: None,
        ca_file: None,
        tag_ttl: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(30),
        allow_push: false,
        evict_after: None,
    }
}

fn alice() -> Option<Credentials> {
    Some(Credentials {
        username: "alice".into(),
        password: USERS[0].1.into(),
    })
}

const ACCEPT: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
];

async fn read_all(client: &UpstreamClient, remote: &str, digest: &Digest) -> Vec<u8> {
    let mut blob = client.blob(remote, digest).await.unwrap();
    let mut bytes = Vec::new();
    while let Some(chunk) = blob.body.next().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(blob.size, Some(bytes.len() as u64));
    bytes
}

/// Pushes an image with skopeo (signed in as alice, trusting `certs`); its layout's blobs
/// and manifest digest.
pub(crate) fn push_image(
    dest: &str,
    certs: Option<&std::path::Path>,
) -> (tempfile::TempDir, String) {
    let work = tempfile::tempdir().unwrap();
    let layout = Layout::new(work.path());
    let built = layout.image(work.path(), "amd64", unique_seed());
    layout.index(&[(OCI_MANIFEST, &built.manifest, built.size, "v1")]);
    let mut copy = skopeo();
    copy.args([
        "copy",
        "-q",
        "--dest-creds",
        &format!("alice:{}", USERS[0].1),
    ]);
    match certs {
        Some(dir) => copy.arg("--dest-cert-dir").arg(dir),
        None => copy.arg("--dest-tls-verify=false"),
    };
    ok(copy.arg(layout.reference("v1")).arg(dest));
    (work, format!("sha256:{}", built.manifest))
}

/// How a client with `settings` fails to read alice/app:v1.
async fn refusal(settings: UpstreamSettings) -> UpstreamError {
    UpstreamClient::new(settings)
        .unwrap()
        .manifest("alice/app", "v1", ACCEPT, ManifestRequest::Get)
        .await
        .unwrap_err()
}

/// A Berth serving TLS with a private CA in token mode (Docker Hub's challenge flow), holding
/// alice/app:v1 pushed by skopeo.
pub(crate) struct TokenOrigin {
    pub(crate) files: AuthFiles,
    pub(crate) setup: TlsSetup,
    pub(crate) server: Server,
    /// The pushed image's layout directory (under `layout/`).
    pub(crate) work: tempfile::TempDir,
    pub(crate) manifest_digest: String,
}

impl TokenOrigin {
    pub(crate) fn start() -> TokenOrigin {
        let files = AuthFiles::new();
        let setup = TlsSetup::new(&["127.0.0.1"]);
        let auth = files.token_settings();
        let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let server = setup.start(&auth);
        let certs = tempfile::tempdir().unwrap();
        std::fs::copy(setup.ca(), certs.path().join("ca.crt")).unwrap();
        let (work, manifest_digest) = push_image(
            &format!("docker://{}/alice/app:v1", server.addr),
            Some(certs.path()),
        );
        TokenOrigin {
            files,
            setup,
            server,
            work,
            manifest_digest,
        }
    }
}

async fn the_upstream_client_follows_token_challenges_over_tls_with_a_private_ca() {
    let TokenOrigin {
        files: _files,
        setup,
        server: origin,
        work,
        manifest_digest,
    } = TokenOrigin::start();
    let url = format!("https://{}", origin.addr);

    let client = UpstreamClient::new(UpstreamSettings {
        credentials: alice(),
        ca_file: Some(setup.ca()),
        ..settings(url.clone())
    })
    .unwrap();
    let head = client
        .manifest("alice/app", "v1", ACCEPT, ManifestRequest::Head)
        .await
        .unwrap();
    assert_eq!(head.digest.as_str(), manifest_digest);
    let got = client
        .manifest("alice/app", "v1", ACCEPT, ManifestRequest::Get)
        .await
        .unwrap();
    assert_eq!(got.digest.as_str(), manifest_digest);
    assert_eq!(got.media_type, OCI_MANIFEST);
    let manifest: serde_json::Value = serde_json::from_slice(got.body.as_ref().unwrap()).unwrap();
    let layer = Digest::parse(manifest["layers"][0]["digest"].as_str().unwrap()).unwrap();
    let bytes = read_all(&client, "alice/app", &layer).await;
    let pushed = blobs_of(&work.path().join("layout"));
    assert!(!pushed.is_empty());
    let pushed_layer = pushed
        .get(layer.encoded())
        .expect("the layer is in the layout");
    assert!(bytes == *pushed_layer, "the layer comes back as pushed");
    assert_eq!(
        client.blob_size("alice/app", &layer).await.unwrap(),
        Some(bytes.len() as u64)
    );
    // By digest, and a digest the upstream does not have.
    client
        .manifest("alice/app", &manifest_digest, ACCEPT, ManifestRequest::Get)
        .await
        .unwrap();
    let missing = Digest::parse(&sha256(b"not there")).unwrap();
    assert!(matches!(
        client.blob("alice/app", &missing).await,
        Err(UpstreamError::NotFound { .. })
    ));
    assert_eq!(client.blob_size("alice/app", &missing).await.unwrap(), None);

    // Anonymous: the token endpoint issues a token without pull rights, which is refused.
    let anonymous = settings(url.clone());
    let refused = refusal(UpstreamSettings {
        ca_file: Some(setup.ca()),
        ..anonymous
    })
    .await;
    assert!(
        matches!(refused, UpstreamError::Unauthorized { .. }),
        "{refused}"
    );
    // A wrong password is refused by the token endpoint.
    let refused = refusal(UpstreamSettings {
        credentials: Some(Credentials {
            username: "alice".into(),
            password: "wrong".into(),
        }),
        ca_file: Some(setup.ca()),
        ..settings(url.clone())
    })
    .await;
    assert!(
        matches!(refused, UpstreamError::Unauthorized { .. }),
        "{refused}"
    );
    // Without the CA, the upstream's certificate is not trusted.
    let refused = refusal(UpstreamSettings {
        credentials: alice(),
        ..settings(url)
    })
    .await;
    let message = refused.to_string();
    assert!(
        matches!(refused, UpstreamError::Unreachable { .. }),
        "{message}"
    );
    assert!(
        message.to_lowercase().contains("certificate") || message.contains("UnknownIssuer"),
        "{message}"
    );
}

async fn the_upstream_client_answers_basic_challenges_only_with_credentials() {
    let files = AuthFiles::new();
    let auth = files.basic_settings();
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let origin = Server::start_with(&auth);
    let (_work, manifest_digest) =
        push_image(&format!("docker://{}/alice/basic:v1", origin.addr), None);
    let url = format!("http://{}", origin.addr);

    let without = UpstreamClient::new(settings(url.clone())).unwrap();
    let refused = without
        .manifest("alice/basic", "v1", ACCEPT, ManifestRequest::Get)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("none are configured"),
        "{refused}"
    );
    let client = UpstreamClient::new(UpstreamSettings {
        credentials: alice(),
        ..settings(url)
    })
    .unwrap();
    let got = client
        .manifest("alice/basic", "v1", ACCEPT, ManifestRequest::Get)
        .await
        .unwrap();
    assert_eq!(got.digest.as_str(), manifest_digest);
    // A digest that is not the bytes' is refused, not passed on.
    let other = sha256(b"some other manifest");
    let refused = client
        .manifest("alice/basic", &other, ACCEPT, ManifestRequest::Get)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, UpstreamError::NotFound { .. }),
        "{refused}"
    );
}

crate::harness::trials! {
    the_upstream_client_follows_token_challenges_over_tls_with_a_private_ca.needs(Sqlite);
    the_upstream_client_answers_basic_challenges_only_with_credentials.needs(Sqlite);
}
