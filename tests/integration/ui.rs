//! The web UI: over HTTP (what it serves, sessions, forms that cannot be forged, listings that
//! page right at any size) and in a real browser (headless Chromium over WebDriver: signing
//! in, browsing, referrers, copying, deleting, keyboard, phone and dark theme), with
//! screenshots of the main pages saved under the target directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::Method;

use crate::auth_fixtures::{AuthFiles, authorized, basic, password_of, start_with_owned};
use crate::util::*;

/// A browser-less visitor: a client that keeps the session cookie it is given.
struct Visitor {
    client: Client,
    cookie: Option<String>,
}

impl Visitor {
    fn new(server: &Server) -> Visitor {
        Visitor {
            client: server.client(),
            cookie: None,
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Answer {
        let request = match &self.cookie {
            Some(cookie) => request.header("cookie", cookie),
            None => request,
        };
        let answer = self.client.send(request).await;
        if let Some(set) = answer.header("set-cookie") {
            let pair = set.split(';').next().unwrap_or_default().to_owned();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
        answer
    }

    async fn get(&mut self, path: &str) -> Answer {
        let request = self.client.request(Method::GET, path);
        self.send(request).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let request = self
            .client
            .request(Method::POST, path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        self.send(request).await
    }

    /// The CSRF token of the visitor's session, as its pages carry it.
    async fn csrf(&mut self) -> String {
        let page = self.get("/ui/sign-in").await;
        field_value(&text(&page), "csrf")
    }

    async fn sign_in(&mut self, user: &str) {
        let csrf = self.csrf().await;
        let answer = self
            .post(
                "/ui/sign-in",
                &[
                    ("csrf", &csrf),
                    ("user", user),
                    ("password", password_of(user)),
                    ("next", "/ui/"),
                ],
            )
            .await;
        answer.expect(303, None);
        assert_eq!(answer.header("location"), Some("/ui/"));
    }
}

fn text(answer: &Answer) -> String {
    String::from_utf8_lossy(&answer.body).into_owned()
}

/// The value of the first `<input name=NAME>` of a page.
fn field_value(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no field {name} in {html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// Every `data-tag` of a repository page, in order.
fn listed_tags(html: &str) -> Vec<String> {
    html.split("data-tag=\"")
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].to_owned())
        .collect()
}

/// The `href` of the link with `id`.
fn link(html: &str, id: &str) -> Option<String> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let start = html[..at].rfind("<a ")?;
    let tag = &html[start..];
    let href = tag.find("href=\"")? + 6;
    Some(tag[href..href + tag[href..].find('"')?].replace("&amp;", "&"))
}

async fn served_and_switched_off() {
    let server = Server::start();
    let client = server.client();
    let root = client.get("/").await;
    root.expect(303, None);
    assert_eq!(root.header("location"), Some("/ui/"));
    let catalog = client.get("/ui/").await;
    catalog.expect(200, None);
    assert_eq!(
        catalog.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let policy = catalog
        .header("content-security-policy")
        .unwrap_or_default();
    assert!(
        policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"),
        "{policy}"
    );
    assert!(
        catalog
            .header("server-timing")
            .is_some_and(|t| t.starts_with("app;dur="))
    );
    assert!(text(&catalog).contains("Repositories"));
    let cookie = catalog.header("set-cookie").unwrap_or_default();
    assert!(
        cookie.starts_with("berth_session=") && !cookie.contains("Secure"),
        "{cookie}"
    );
    // Behind a proxy that ended TLS, the cookie is kept for HTTPS only.
    let proxied = client
        .send(
            client
                .request(Method::GET, "/ui/")
                .header("x-forwarded-proto", "https"),
        )
        .await;
    let cookie = proxied.header("set-cookie").unwrap_or_default();
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    client.get("/ui/assets/berth.css").await.expect(200, None);
    client.get("/ui/assets/berth.js").await.expect(200, None);
    client.get("/ui/assets/missing.js").await.expect(404, None);
    let missing = client.get("/ui/no/such/page").await;
    missing.expect(404, None);
    assert!(text(&missing).contains("there is no page at /ui/no/such/page"));
    // The API is untouched.
    client.get("/v2/").await.expect(200, None);

    let off = Server::start_with(&[("BERTH_UI", "false")]);
    off.client().get("/ui/").await.expect(404, None);
    off.client().get("/").await.expect(404, None);
    off.client().get("/v2/").await.expect(200, None);
}

async fn sessions_and_forms_cannot_be_forged() {
    let files = AuthFiles::new();
    let key = files.dir.path().join("ui-session.key");
    std::fs::write(&key, "k".repeat(48)).unwrap();
    let mut settings = files.basic_settings();
    settings.push(("BERTH_UI_SESSION_KEY".into(), key.display().to_string()));
    let server = start_with_owned(&settings);
    let admin = authorized(&server, &basic("admin", password_of("admin")));
    admin.push_image("team/app", "v1", 1).await;
    admin.push_image("alice/own", "v1", 2).await;

    // Anonymous visitors are asked to sign in; the catalog shows them nothing of team/.
    let mut anonymous = Visitor::new(&server);
    let asked = anonymous.get("/ui/r/team/app").await;
    asked.expect(303, None);
    assert_eq!(
        asked.header("location"),
        Some("/ui/sign-in?next=%2Fui%2Fr%2Fteam%2Fapp")
    );
    assert!(!text(&anonymous.get("/ui/").await).contains("team/app"));

    // A sign-in needs the form's token and the right password.
    let mut alice = Visitor::new(&server);
    let csrf = alice.csrf().await;
    let forged = alice
        .post(
            "/ui/sign-in",
            &[("user", "alice"), ("password", password_of("alice"))],
        )
        .await;
    forged.expect(403, None);
    let wrong = alice
        .post(
            "/ui/sign-in",
            &[("csrf", &csrf), ("user", "alice"), ("password", "nope")],
        )
        .await;
    wrong.expect(401, None);
    assert!(text(&wrong).contains("the user name or password is wrong"));
    let csrf = alice.csrf().await;
    let signed_in = alice
        .post(
            "/ui/sign-in",
            &[
                ("csrf", &csrf),
                ("user", "alice"),
                ("password", password_of("alice")),
                ("next", "/ui/r/alice/own"),
            ],
        )
        .await;
    signed_in.expect(303, None);
    assert_eq!(signed_in.header("location"), Some("/ui/r/alice/own"));
    let cookie = signed_in.header("set-cookie").unwrap_or_default();
    assert!(
        cookie.contains("Max-Age=43200")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(
        alice
            .cookie
            .as_deref()
            .is_some_and(|c| c.starts_with("berth_session="))
    );
    // Just pushed is just now (times are kept in milliseconds and shown in people's units).
    let page = text(&alice.get("/ui/r/alice/own").await);
    assert!(page.contains("just now"), "{page}");
    let catalog = text(&alice.get("/ui/").await);
    assert!(
        catalog.contains("team/app") && catalog.contains("alice/own"),
        "{catalog}"
    );

    // Alice may pull from team/ but not delete: no button, and a forged delete is refused.
    let page = text(&alice.get("/ui/r/team/app").await);
    assert!(!page.contains("/-/delete"), "{page}");
    let csrf = field_value(&page, "csrf");
    alice
        .post(
            "/ui/r/team/app/-/delete",
            &[("csrf", &csrf), ("reference", "v1")],
        )
        .await
        .expect(403, None);
    alice
        .get("/ui/r/team/app/-/delete?reference=v1")
        .await
        .expect(403, None);

    // Admin may delete, but only with the session's own token and from this site.
    let mut admin_visitor = Visitor::new(&server);
    admin_visitor.sign_in("admin").await;
    let page = text(&admin_visitor.get("/ui/r/team/app").await);
    let token = field_value(&page, "csrf");
    admin_visitor
        .post(
            "/ui/r/team/app/-/delete",
            &[("csrf", &csrf), ("reference", "v1")],
        )
        .await
        .expect(403, None);
    let cross_site = admin_visitor
        .send(
            admin_visitor
                .client
                .request(Method::POST, "/ui/r/team/app/-/delete")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("origin", "https://evil.example")
                .body(format!("csrf={token}&reference=v1")),
        )
        .await;
    cross_site.expect(403, None);
    admin
        .get("/v2/team/app/manifests/v1")
        .await
        .expect(200, None);

    // A cookie signed with another key, or changed, is no session.
    let mut stranger = Visitor::new(&server);
    let cookie = admin_visitor.cookie.clone().unwrap();
    let (name, value) = cookie.split_once('=').unwrap();
    let (payload, mac) = value.split_once('.').unwrap();
    let forged_payload = hex::encode(
        String::from_utf8(hex::decode(payload).unwrap())
            .unwrap()
            .replace("admin", "alice"),
    );
    stranger.cookie = Some(format!("{name}={forged_payload}.{mac}"));
    stranger.get("/ui/r/team/app").await.expect(303, None);

    // The same key on another replica reads the session: a sign-in holds wherever the load
    // balancer sends the next request.
    let replica = server.sibling();
    let mut on_replica = Visitor::new(&replica);
    on_replica.cookie = admin_visitor.cookie.clone();
    let page = text(&on_replica.get("/ui/r/team/app").await);
    assert!(
        page.contains("Signed in as") && page.contains("admin"),
        "{page}"
    );

    // Signing out ends the session in the browser.
    let token = field_value(&text(&admin_visitor.get("/ui/").await), "csrf");
    admin_visitor
        .post("/ui/sign-out", &[("csrf", &token)])
        .await
        .expect(303, None);
    assert_eq!(admin_visitor.cookie, None);

    // Bob may not list the catalog: he opens repositories by name.
    let mut bob = Visitor::new(&server);
    bob.sign_in("bob").await;
    let catalog = text(&bob.get("/ui/").await);
    assert!(
        catalog.contains("id=\"no-catalog\"") && !catalog.contains("team/app"),
        "{catalog}"
    );
    let opened = bob.get("/ui/?open=alice%2Fown").await;
    assert_eq!(opened.header("location"), Some("/ui/r/alice/own"));
    bob.get("/ui/r/alice/own").await.expect(403, None);

    // A session outlives neither a password change nor its user.
    let htpasswd = files.dir.path().join("htpasswd");
    let changed = std::fs::read_to_string(&htpasswd)
        .unwrap()
        .lines()
        .map(|line| match line.split_once(':') {
            Some(("alice", _)) => format!(
                "alice:{}",
                bcrypt::hash("alice-New-2", 5)
                    .unwrap()
                    .replacen("$2b$", "$2y$", 1)
            ),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&htpasswd, changed + "\n").unwrap();
    eventually(
        "the password change ends alice's session",
        Duration::from_secs(20),
        async || alice.get("/ui/r/alice/own").await.status == reqwest::StatusCode::SEE_OTHER,
    )
    .await;
}

async fn tags_page_by_push_time_and_the_catalog_by_name() {
    let server = Server::start();
    let client = server.client();
    // 120 tags in a few seconds: many share a push second, and the cursor must still visit
    // each once.
    let image = client.push_image("paged/app", "first", 7).await;
    for i in 0..120 {
        client
            .put_manifest(
                "paged/app",
                &format!("t{i:03}"),
                OCI_MANIFEST,
                &image.manifest,
            )
            .await
            .expect(201, None);
    }
    let mut seen = Vec::new();
    let mut next = Some("/ui/r/paged/app".to_owned());
    while let Some(path) = next {
        let page = text(&client.get(&path).await);
        let tags = listed_tags(&page);
        assert!(tags.len() <= 50, "{} tags on one page", tags.len());
        seen.extend(tags);
        next = link(&page, "next");
    }
    let mut expected: Vec<String> = (0..120).map(|i| format!("t{i:03}")).collect();
    expected.push("first".to_owned());
    let mut sorted = seen.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "every tag once");
    assert_eq!(
        seen.last().map(String::as_str),
        Some("first"),
        "the oldest push comes last"
    );

    // The catalog: search by part of a name, `_` meaning itself, pages without gaps.
    for i in 0..230 {
        let name = if i % 2 == 0 {
            format!("search/needle-{i:03}")
        } else {
            format!("search/other-{i:03}")
        };
        client
            .push_blob(&name, format!("blob {i}").as_bytes())
            .await;
    }
    client.push_blob("search/needle_underscore", b"x").await;
    let mut found = Vec::new();
    let mut next = Some("/ui/?q=NEEDLE".to_owned());
    while let Some(path) = next {
        let page = text(&client.get(&path).await);
        found.extend(
            page.split("class=\"repository\" href=\"/ui/r/")
                .skip(1)
                .map(|rest| rest[..rest.find('"').unwrap()].to_owned()),
        );
        next = link(&page, "next");
    }
    assert_eq!(
        found.len(),
        116,
        "115 needle-NNN and needle_underscore: {found:?}"
    );
    assert!(
        found.windows(2).all(|w| w[0] < w[1]),
        "in name order, each once"
    );
    let underscore = text(&client.get("/ui/?q=e_u").await);
    assert!(
        underscore.contains("search/needle_underscore"),
        "{underscore}"
    );
    // `_` is no wildcard: nothing has "e_0", although "needle-0…" has "e", a character, "0".
    let literal = text(&client.get("/ui/?q=e_0").await);
    assert!(literal.contains("id=\"empty\""), "{literal}");

    // Untagged manifests on request.
    let untagged = client.push_image("paged/app", "later", 8).await;
    client
        .call(Method::DELETE, "/v2/paged/app/manifests/later")
        .await
        .expect(202, None);
    let page = text(&client.get("/ui/r/paged/app?untagged=1").await);
    assert!(
        page.contains(&format!("/-/manifest/{}", untagged.digest)),
        "{page}"
    );
}

/// The referrers, pushed with oras-py as a signature and an SBOM of `subject`, and an
/// attestation of the SBOM.
const ORAS_REFERRERS: &str = r#"
import sys, os, json, base64, hashlib, urllib.request, oras.client, oras.oci
host, user, password, work, repository, subject_digest, subject_size, subject_type = sys.argv[1:9]
client = oras.client.OrasClient(hostname=host, insecure=True, auth_backend="basic")
client.login(username=user, password=password, hostname=host, config_path=os.path.join(work, "config.json"))
os.chdir(work)
def pushed(tag):  # the manifest as stored: its exact bytes' digest and size
    request = urllib.request.Request(
        f"http://{host}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json",
                 "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()})
    body = urllib.request.urlopen(request).read()
    return oras.oci.Subject(mediaType="application/vnd.oci.image.manifest.v1+json",
                            digest="sha256:" + hashlib.sha256(body).hexdigest(), size=len(body))
def push(name, artifact_type, subject, tag):
    with open(name, "w") as f:
        f.write(json.dumps({"artifact": name}))
    with open("config.json.empty", "w") as f:
        f.write("{}")
    client.push(files=[name + ":application/json"], manifest_config="config.json.empty:" + artifact_type,
                target=f"{host}/{repository}:{tag}", subject=subject)
    return pushed(tag)
image = oras.oci.Subject(mediaType=subject_type, digest=subject_digest, size=int(subject_size))
hex_ = subject_digest.split(":")[1]
push("signature", "application/vnd.dev.cosign.artifact.sig.v1+json", image, f"sha256-{hex_}.sig")
sbom = push("sbom", "application/spdx+json", image, f"sha256-{hex_}.sbom")
push("attestation", "application/vnd.in-toto+json", sbom, "sbom-attestation")
print(sbom.digest)
"#;

/// Where this run's screenshots go.
fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("ui-screenshots")
        .join(format!("{:?}", Backend::current()).to_lowercase())
}

async fn wait_for_text(browser: &Browser, css: &str, wanted: &str) {
    let started = std::time::Instant::now();
    loop {
        let shown = browser.text_now(css).await.unwrap_or_default();
        if shown.contains(wanted) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{css} shows {shown:?}, not {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_real_browser_signs_in_browses_copies_and_deletes() {
    let files = AuthFiles::new();
    let mut settings = files.basic_settings();
    settings.push(("BERTH_IMMUTABLE_TAGS".into(), "team/**:release-*".into()));
    let server = start_with_owned(&settings);
    let host = server.addr.to_string();
    let admin = authorized(&server, &basic("admin", password_of("admin")));
    let work = tempfile::tempdir().unwrap();

    // A two-platform index, pushed by skopeo as admin.
    let layout = Layout::new(work.path());
    let amd64 = layout.image(work.path(), "amd64", unique_seed());
    let arm64 = layout.image(work.path(), "arm64", unique_seed());
    let (_, index_hex) = layout.multi_arch(&[
        (&amd64, r#"{"architecture":"amd64","os":"linux"}"#),
        (
            &arm64,
            r#"{"architecture":"arm64","os":"linux","variant":"v8"}"#,
        ),
    ]);
    let index_size = std::fs::metadata(layout.dir.join("blobs/sha256").join(&index_hex))
        .unwrap()
        .len() as usize;
    layout.index(&[(OCI_INDEX, &index_hex, index_size, "v1")]);
    ok(skopeo()
        .args([
            "copy",
            "-q",
            "--all",
            "--dest-tls-verify=false",
            "--dest-creds",
        ])
        .arg(format!("admin:{}", password_of("admin")))
        .arg(layout.reference("v1"))
        .arg(format!("docker://{host}/team/app:v1")));
    admin.push_image("team/app", "v0", unique_seed()).await;
    admin
        .push_image("team/app", "release-1", unique_seed())
        .await;
    admin
        .push_image("public/hello", "latest", unique_seed())
        .await;
    // A crafted annotation; a crafted tag name the API refuses outright.
    let config_bytes = br#"{"architecture":"amd64","os":"linux"}"#;
    let config = admin.push_blob("team/app", config_bytes).await;
    let evil = r#"<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>"#;
    let crafted = image_manifest(
        &config,
        config_bytes.len(),
        &[],
        Some(&format!(
            r#""annotations":{{"org.opencontainers.image.description":{}}}"#,
            serde_json::to_string(evil).unwrap()
        )),
    );
    admin
        .put_manifest("team/app", "crafted", OCI_MANIFEST, &crafted)
        .await
        .expect(201, None);
    let crafted_digest = sha256(&crafted);
    admin
        .put_manifest("team/app", "%22%3E%3Cscript%3E", OCI_MANIFEST, &crafted)
        .await
        .expect(400, None);

    // Referrers of the amd64 image, pushed by oras-py.
    let amd64_size = std::fs::metadata(layout.dir.join("blobs/sha256").join(&amd64.manifest))
        .unwrap()
        .len();
    let script = work.path().join("referrers.py");
    std::fs::write(&script, ORAS_REFERRERS).unwrap();
    let sbom_digest = ok(Command::new("python3")
        .arg(&script)
        .args([&host, "admin", password_of("admin")])
        .arg(work.path())
        .args([
            "team/app",
            &format!("sha256:{}", amd64.manifest),
            &amd64_size.to_string(),
            OCI_MANIFEST,
        ]))
    .trim()
    .to_owned();
    assert!(sbom_digest.starts_with("sha256:"), "{sbom_digest}");

    let shots = screenshots();
    let browser = Browser::start(1280, 900).await;
    let base = format!("http://{host}");

    // Anonymous: no catalog permission, so a repository is opened by name; only what
    // anonymous callers may pull.
    browser.open(&format!("{base}/")).await;
    assert!(browser.url().await.ends_with("/ui/"));
    browser.find("#no-catalog").await;
    browser.type_into("#open", "public/hello").await;
    browser.press(&["\u{E007}"]).await;
    wait_for_text(&browser, "#repository-name", "public/hello").await;
    browser.open(&format!("{base}/ui/r/team/app")).await;
    wait_for_text(&browser, "h1", "Sign in").await;
    browser.open(&format!("{base}/ui/")).await;

    // Keyboard: the first Tab reaches the skip link.
    browser.press(&["\u{E004}"]).await;
    let focused = browser
        .run("return document.activeElement.textContent")
        .await;
    assert_eq!(focused.as_str(), Some("Skip to content"));

    // Alice signs in, searches, opens the repository.
    browser.click_on("#sign-in").await;
    browser.type_into("#user", "alice").await;
    browser.type_into("#password", password_of("alice")).await;
    browser.click_on("#submit").await;
    wait_for_text(&browser, "#user", "alice").await;
    browser.type_into("#q", "app").await;
    browser.press(&["\u{E007}"]).await;
    wait_for_text(&browser, "#repositories", "team/app").await;
    assert!(
        !browser
            .text_of("#repositories")
            .await
            .contains("public/hello")
    );
    browser.screenshot(&shots.join("catalog.png")).await;
    browser.click_on("a.repository").await;
    wait_for_text(&browser, "#repository-name", "team/app").await;
    let tags = browser.text_of("#tags").await;
    for wanted in [
        "v1",
        "v0",
        "release-1",
        "crafted",
        "linux/amd64",
        "linux/arm64/v8",
        "index",
    ] {
        assert!(tags.contains(wanted), "{wanted} missing from {tags}");
    }
    assert!(
        browser.all("a.button.danger").await.is_empty(),
        "alice may not delete"
    );
    assert!(browser.text_of("#storage").await.contains("Storage used"));
    browser.screenshot(&shots.join("repository.png")).await;

    // Copy a pull command.
    let command = browser.text_of("tr[data-tag=v1] code.pull-command").await;
    assert_eq!(command, format!("docker pull {host}/team/app:v1"));
    browser.click_on("tr[data-tag=v1] button.copy").await;
    wait_for_text(&browser, "tr[data-tag=v1] button.copy", "Copied").await;
    let copied = browser.find("tr[data-tag=v1] button.copy").await;
    assert_eq!(
        browser.attribute(&copied, "data-copied").await,
        Some(command)
    );

    // The index, a platform, and the referrers under the image.
    browser.click_on("tr[data-tag=v1] a.digest").await;
    wait_for_text(&browser, "#manifest-kind", "index").await;
    wait_for_text(&browser, "#platforms", "linux/arm64/v8").await;
    browser.screenshot(&shots.join("index.png")).await;
    let platforms = browser.all("a.platform").await;
    let mut amd64_link = None;
    for platform in platforms {
        if browser.text(&platform).await == "linux/amd64" {
            amd64_link = Some(platform);
        }
    }
    browser
        .click(&amd64_link.expect("a link to linux/amd64"))
        .await;
    wait_for_text(&browser, "#manifest-digest", &amd64.manifest).await;
    wait_for_text(&browser, "#config-platform", "linux/amd64").await;
    let referrers = browser.text_of("#referrers").await;
    assert!(
        referrers.contains("signature")
            && referrers.contains("application/vnd.dev.cosign.artifact.sig.v1+json"),
        "{referrers}"
    );
    assert!(
        referrers.contains("SBOM") && referrers.contains("application/spdx+json"),
        "{referrers}"
    );
    let nested = browser.text_of("li.referrer[data-kind=SBOM] ul").await;
    assert!(
        nested.contains("attestation"),
        "the attestation hangs under the SBOM: {referrers}"
    );
    browser
        .screenshot(&shots.join("image-with-referrers.png"))
        .await;

    // The crafted annotation shows as text and runs nothing.
    browser
        .open(&format!("{base}/ui/r/team/app/-/manifest/{crafted_digest}"))
        .await;
    wait_for_text(&browser, "#annotations", "<script>window.__xss=2</script>").await;
    assert_eq!(
        browser
            .run("return window.__xss === undefined")
            .await
            .as_bool(),
        Some(true)
    );
    assert!(
        browser
            .all("#annotations img, #annotations script")
            .await
            .is_empty()
    );

    // Alice's forged delete is refused by the server, not only hidden (a form built in the
    // page: the content security policy lets no script send a request itself).
    browser
        .run(
            "const form = document.createElement('form'); \
             form.method = 'post'; form.action = '/ui/r/team/app/-/delete'; \
             for (const [name, value] of [['reference', 'v0'], \
                 ['csrf', document.querySelector('input[name=csrf]').value]]) { \
               const input = document.createElement('input'); \
               input.type = 'hidden'; input.name = name; input.value = value; form.appendChild(input); } \
             document.body.appendChild(form); form.submit(); return true;",
        )
        .await;
    wait_for_text(&browser, "#problem", "alice may not delete from team/app").await;
    admin
        .get("/v2/team/app/manifests/v0")
        .await
        .expect(200, None);

    // Admin deletes v0 with a confirmation; an immutable tag is refused with the reason.
    browser.click_on("#sign-out").await;
    browser.click_on("#sign-in").await;
    browser.type_into("#user", "admin").await;
    browser.type_into("#password", password_of("admin")).await;
    browser.click_on("#submit").await;
    wait_for_text(&browser, "#user", "admin").await;
    browser.open(&format!("{base}/ui/r/team/app")).await;
    browser.click_on("tr[data-tag=v0] a.button.danger").await;
    wait_for_text(&browser, "h1", "Delete tag?").await;
    browser.screenshot(&shots.join("confirm-delete.png")).await;
    browser.click_on("#confirm-delete").await;
    wait_for_text(&browser, "#deleted", "v0").await;
    assert!(browser.all("tr[data-tag=v0]").await.is_empty());
    admin
        .get("/v2/team/app/manifests/v0")
        .await
        .expect(404, Some("MANIFEST_UNKNOWN"));
    browser
        .click_on("tr[data-tag=release-1] a.button.danger")
        .await;
    browser.click_on("#confirm-delete").await;
    wait_for_text(&browser, "#problem", "immutable").await;
    admin
        .get("/v2/team/app/manifests/release-1")
        .await
        .expect(200, None);

    // Dark theme, kept across pages.
    browser.open(&format!("{base}/ui/r/team/app")).await;
    browser.click_on("#theme").await;
    let theme = browser
        .run("return document.documentElement.getAttribute('data-theme')")
        .await;
    assert_eq!(theme.as_str(), Some("dark"));
    browser.open(&format!("{base}/ui/r/team/app")).await;
    let theme = browser
        .run("return document.documentElement.getAttribute('data-theme')")
        .await;
    assert_eq!(theme.as_str(), Some("dark"));
    browser.screenshot(&shots.join("repository-dark.png")).await;

    // A phone: nothing wider than the screen, secondary columns folded away.
    browser.click_on("#theme").await;
    browser.resize(390, 844).await;
    browser.open(&format!("{base}/ui/r/team/app")).await;
    browser.find("#tags").await;
    browser
        .screenshot(&shots.join("repository-phone.png"))
        .await;
    let wider = browser
        .run(
            "return [...document.querySelectorAll('body *')] \
               .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1) \
               .map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right)) \
               .concat([document.documentElement.scrollWidth + ' > ' + window.innerWidth]) \
               .slice(-12)",
        )
        .await;
    let fits = browser
        .run("return document.documentElement.scrollWidth <= window.innerWidth")
        .await;
    assert_eq!(
        fits.as_bool(),
        Some(true),
        "the page scrolls sideways on a phone: {wider}"
    );
    let folded = browser
        .run("return getComputedStyle(document.querySelector('td.wide')).display")
        .await;
    assert_eq!(folded.as_str(), Some("none"));
    eprintln!("web UI screenshots: {}", shots.display());
}

crate::harness::trials! {
    served_and_switched_off;
    sessions_and_forms_cannot_be_forged.needs(SharedState);
    tags_page_by_push_time_and_the_catalog_by_name;
    a_real_browser_signs_in_browses_copies_and_deletes.multi_thread(2);
}
