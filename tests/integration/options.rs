//! Server options that let client authors test against real-world registry quirks, each set
//! through its configuration key on the real binary.

use reqwest::Method;

use crate::util::*;

async fn referrers_api_can_be_disabled() {
    let server = Server::start_with(&[("BERTH_REFERRERS_API", "false")]);
    let c = server.client();
    let subject = c.push_image("noref", "v1", unique_seed()).await;
    let config = c.push_blob("noref", b"{}").await;
    let referrer = image_manifest(
        &config,
        2,
        &[],
        Some(&format!(
            r#""subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{}}}"#,
            subject.digest,
            subject.manifest.len()
        )),
    );
    let a = c
        .put_manifest("noref", &sha256(&referrer), OCI_MANIFEST, &referrer)
        .await;
    a.expect(201, None);
    assert!(
        a.header("oci-subject").is_none(),
        "no OCI-Subject without the referrers API"
    );
    c.get(&format!("/v2/noref/referrers/{}", subject.digest))
        .await
        .expect(404, None);
}

async fn single_request_uploads_can_be_disabled() {
    let server = Server::start_with(&[("BERTH_SINGLE_REQUEST_UPLOADS", "false")]);
    let c = server.client();
    let data = b"sent with POST ?digest=".to_vec();
    let digest = sha256(&data);
    let a = c
        .send(
            c.request(Method::POST, "/v2/nosingle/blobs/uploads/")
                .query(&[("digest", &digest)])
                .body(data.clone()),
        )
        .await;
    a.expect(202, None);
    c.call(Method::HEAD, &format!("/v2/nosingle/blobs/{digest}"))
        .await
        .expect(404, None);
    // The client proceeds with a PUT, as the spec tells it to.
    c.send(
        c.request(Method::PUT, a.header("location").unwrap())
            .query(&[("digest", &digest)])
            .body(data),
    )
    .await
    .expect(201, None);
}

async fn page_size_limit_refuses_larger_pages() {
    let server = Server::start_with(&[("BERTH_MAX_PAGE_SIZE", "2")]);
    let c = server.client();
    let image = c.push_image("pages", "t1", unique_seed()).await;
    for tag in ["t2", "t3"] {
        c.put_manifest("pages", tag, OCI_MANIFEST, &image.manifest)
            .await
            .expect(201, None);
    }
    c.get("/v2/pages/tags/list?n=3").await.expect(400, None);
    c.get("/v2/_catalog?n=3").await.expect(400, None);
    let page = c.get("/v2/pages/tags/list?n=2").await;
    page.expect(200, None);
    assert_eq!(page.json()["tags"].as_array().unwrap().len(), 2);
    assert!(page.header("link").is_some());
    // Without n, the page size is the limit.
    let page = c.get("/v2/pages/tags/list").await;
    assert_eq!(page.json()["tags"].as_array().unwrap().len(), 2);
    assert!(page.header("link").unwrap().contains("last=t2"));
}

async fn digest_header_can_be_omitted_on_tag_gets() {
    let server = Server::start_with(&[("BERTH_TAG_DIGEST_HEADER", "false")]);
    let c = server.client();
    let image = c.push_image("nodigest", "v1", unique_seed()).await;
    let by_tag = c.get("/v2/nodigest/manifests/v1").await;
    by_tag.expect(200, None);
    assert!(by_tag.header("docker-content-digest").is_none());
    let head = c.call(Method::HEAD, "/v2/nodigest/manifests/v1").await;
    assert!(head.header("docker-content-digest").is_none());
    let by_digest = c
        .get(&format!("/v2/nodigest/manifests/{}", image.digest))
        .await;
    assert_eq!(
        by_digest.header("docker-content-digest"),
        Some(image.digest.as_str())
    );
}

async fn link_headers_can_be_omitted() {
    let server = Server::start_with(&[("BERTH_LINK_HEADERS", "false")]);
    let c = server.client();
    let image = c.push_image("nolink", "a", unique_seed()).await;
    c.put_manifest("nolink", "b", OCI_MANIFEST, &image.manifest)
        .await
        .expect(201, None);
    let page = c.get("/v2/nolink/tags/list?n=1").await;
    page.expect(200, None);
    assert_eq!(page.json()["tags"].as_array().unwrap().len(), 1);
    assert!(page.header("link").is_none());
    assert!(c.get("/v2/_catalog?n=0").await.header("link").is_none());
}

crate::harness::trials! {
    referrers_api_can_be_disabled;
    single_request_uploads_can_be_disabled;
    page_size_limit_refuses_larger_pages;
    digest_header_can_be_omitted_on_tag_gets;
    link_headers_can_be_omitted;
}
