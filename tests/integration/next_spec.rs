//! What the next release of the distribution spec adds (`distribution-spec-main.md`): tags on a
//! push by digest (end-7b), `digest-algorithm` on upload start (end-4c), cancelling an upload
//! (end-14); and sparse manifests for mirrors.

use reqwest::Method;

use crate::util::*;

/// Every value of every `OCI-Tag` header (a header may list several, comma-separated).
fn oci_tags(answer: &Answer) -> Vec<String> {
    answer
        .headers
        .get_all("oci-tag")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_owned())
        .collect()
}

async fn tags_of(c: &Client, repo: &str) -> Vec<String> {
    let list = c.get(&format!("/v2/{repo}/tags/list")).await;
    list.expect(200, None);
    list.json()["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

/// PUTs `manifest` by `digest` into `repo` with `query` (its `tag` parameters).
async fn push_by_digest<Q: serde::Serialize + ?Sized>(
    c: &Client,
    repo: &str,
    digest: &str,
    manifest: &[u8],
    query: &Q,
) -> Answer {
    c.send(
        c.request(Method::PUT, &format!("/v2/{repo}/manifests/{digest}"))
            .query(query)
            .header("content-type", OCI_MANIFEST)
            .body(manifest.to_vec()),
    )
    .await
}

async fn push_by_digest_sets_the_tags_of_its_query_end_7b() {
    let server = Server::start();
    let c = server.client();
    let image = c.push_image("tagged", "seed", unique_seed()).await;
    // Eleven tags: the spec asks for at least ten per request.
    let tags: Vec<String> = (0..11).map(|i| format!("v1.{i}")).collect();
    let mut query: Vec<(&str, &str)> = tags.iter().map(|t| ("tag", t.as_str())).collect();
    query.push(("tag", "latest"));
    let pushed = push_by_digest(&c, "tagged", &image.digest, &image.manifest, &query).await;
    pushed.expect(201, None);
    assert_eq!(
        pushed.header("docker-content-digest"),
        Some(image.digest.as_str())
    );
    let mut announced = oci_tags(&pushed);
    announced.sort();
    let mut expected: Vec<String> = tags.clone();
    expected.push("latest".into());
    expected.sort();
    assert_eq!(announced, expected, "one OCI-Tag per accepted tag");
    let listed = tags_of(&c, "tagged").await;
    for tag in &expected {
        assert!(listed.contains(tag), "{tag} is listed");
        let got = c.get(&format!("/v2/tagged/manifests/{tag}")).await;
        got.expect(200, None);
        assert_eq!(
            got.header("docker-content-digest"),
            Some(image.digest.as_str())
        );
    }

    // The most tags a push may set: an ordinary HTTP client (at most 100 response headers)
    // reads the answer.
    let hundred: Vec<(&str, String)> = (0..100).map(|i| ("tag", format!("h{i:03}"))).collect();
    let pushed = push_by_digest(&c, "tagged", &image.digest, &image.manifest, &hundred).await;
    pushed.expect(201, None);
    assert_eq!(oci_tags(&pushed).len(), 100);
    assert!(pushed.headers.get_all("oci-tag").iter().count() <= 10);

    // Past the limit: 414, and nothing is tagged.
    let many: Vec<(&str, String)> = (0..101).map(|i| ("tag", format!("many{i}"))).collect();
    push_by_digest(&c, "tagged", &image.digest, &image.manifest, &many)
        .await
        .expect(414, None);
    // One invalid tag refuses the whole push.
    push_by_digest(
        &c,
        "tagged",
        &image.digest,
        &image.manifest,
        &[("tag", "fine"), ("tag", "-not-a-tag")],
    )
    .await
    .expect(400, Some("TAG_INVALID"));
    let listed = tags_of(&c, "tagged").await;
    assert!(
        !listed.iter().any(|t| t.starts_with("many") || t == "fine"),
        "refused pushes set no tag: {listed:?}"
    );
}

async fn a_sha512_manifest_keeps_its_digest_through_its_tags() {
    let server = Server::start();
    let c = server.client();
    let image = c.push_image("s512m", "seed", unique_seed()).await;
    let digest = sha512(&image.manifest);
    let pushed = push_by_digest(&c, "s512m", &digest, &image.manifest, &[("tag", "v512")]).await;
    pushed.expect(201, None);
    assert_eq!(
        pushed.header("docker-content-digest"),
        Some(digest.as_str())
    );
    assert_eq!(oci_tags(&pushed), vec!["v512".to_owned()]);
    for method in [Method::GET, Method::HEAD] {
        let got = c.call(method.clone(), "/v2/s512m/manifests/v512").await;
        got.expect(200, None);
        assert_eq!(
            got.header("docker-content-digest"),
            Some(digest.as_str()),
            "{method} by tag answers the digest it was pushed under"
        );
    }
    let by_digest = c.get(&format!("/v2/s512m/manifests/{digest}")).await;
    by_digest.expect(200, None);
    assert_eq!(&by_digest.body[..], &image.manifest[..]);
    // The sha256 of the same bytes was never pushed; "seed" points at it, but a manifest
    // pushed only under sha512 is not answered under its sha256 twin in another repository.
    let other = c.push_image("s512only", "seed", unique_seed()).await;
    let only512 = sha512(&other.manifest);
    push_by_digest(
        &c,
        "s512only",
        &only512,
        &other.manifest,
        &[("tag", "only")],
    )
    .await
    .expect(201, None);
    c.call(
        Method::DELETE,
        &format!("/v2/s512only/manifests/{}", other.digest),
    )
    .await
    .expect(202, None);
    c.get(&format!("/v2/s512only/manifests/{}", other.digest))
        .await
        .expect(404, Some("MANIFEST_UNKNOWN"));
    let got = c.get("/v2/s512only/manifests/only").await;
    got.expect(200, None);
    assert_eq!(got.header("docker-content-digest"), Some(only512.as_str()));
}

async fn digest_algorithm_on_upload_start_end_4c() {
    let server = Server::start();
    let c = server.client();
    let data = random_bytes(70_000, unique_seed());
    let digest = sha512(&data);
    let location = c
        .start_upload_with("algo", "?digest-algorithm=sha512")
        .await;
    c.finish_upload(&location, &digest, &data)
        .await
        .expect(201, None);
    let got = c
        .call(Method::HEAD, &format!("/v2/algo/blobs/{digest}"))
        .await;
    got.expect(200, None);
    assert_eq!(got.header("docker-content-digest"), Some(digest.as_str()));
    for unsupported in ["md5", "sha384", "", "SHA512"] {
        c.call(
            Method::POST,
            &format!("/v2/algo/blobs/uploads/?digest-algorithm={unsupported}"),
        )
        .await
        .expect(400, Some("DIGEST_INVALID"));
    }
}

async fn cancelling_an_upload_answers_204_end_14() {
    let server = Server::start();
    let c = server.client();
    let location = c.start_upload("cancel14").await;
    c.call(Method::DELETE, &location).await.expect(204, None);
    c.call(Method::DELETE, &location)
        .await
        .expect(404, Some("BLOB_UPLOAD_UNKNOWN"));
}

fn index_of(children: &[(&str, usize)]) -> Vec<u8> {
    let manifests: Vec<String> = children
        .iter()
        .map(|(d, s)| {
            format!(
                r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":{s},"platform":{{"architecture":"amd64","os":"linux"}}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        manifests.join(",")
    )
    .into_bytes()
}

/// An image pushed to `mirror`, the digest of a platform manifest absent from it, and an index
/// of both.
async fn sparse_index(c: &Client) -> (Image, String, Vec<u8>) {
    let present = c.push_image("mirror", "amd64", unique_seed()).await;
    let absent = sha256(b"a platform this mirror did not copy");
    let index = index_of(&[(&present.digest, present.manifest.len()), (&absent, 1234)]);
    (present, absent, index)
}

async fn sparse_manifests_are_refused_by_default() {
    let server = Server::start();
    let c = server.client();
    let (_, _, index) = sparse_index(&c).await;
    c.put_manifest("mirror", "multi", OCI_INDEX, &index)
        .await
        .expect(400, Some("MANIFEST_BLOB_UNKNOWN"));
}

async fn sparse_manifests_are_accepted_when_enabled_for_mirrors() {
    let server = Server::start_with(&[("BERTH_SPARSE_MANIFESTS", "true")]);
    let c = server.client();
    let (present, absent, index) = sparse_index(&c).await;
    c.put_manifest("mirror", "multi", OCI_INDEX, &index)
        .await
        .expect(201, None);
    let got = c.get("/v2/mirror/manifests/multi").await;
    got.expect(200, None);
    assert_eq!(&got.body[..], &index[..]);
    c.get(&format!("/v2/mirror/manifests/{}", present.digest))
        .await
        .expect(200, None);
    c.get(&format!("/v2/mirror/manifests/{absent}"))
        .await
        .expect(404, Some("MANIFEST_UNKNOWN"));
    // A manifest whose layer was not copied (a foreign or non-distributable layer).
    let config = c.push_blob("mirror", b"{}").await;
    let layer = sha256(b"a layer that stays upstream");
    let manifest = image_manifest(&config, 2, &[(&layer, 99)], None);
    c.put_manifest("mirror", "partial", OCI_MANIFEST, &manifest)
        .await
        .expect(201, None);
    c.get(&format!("/v2/mirror/blobs/{layer}"))
        .await
        .expect(404, Some("BLOB_UNKNOWN"));
}

crate::harness::trials! {
    push_by_digest_sets_the_tags_of_its_query_end_7b;
    a_sha512_manifest_keeps_its_digest_through_its_tags;
    digest_algorithm_on_upload_start_end_4c;
    cancelling_an_upload_answers_204_end_14;
    sparse_manifests_are_refused_by_default;
    sparse_manifests_are_accepted_when_enabled_for_mirrors;
}
