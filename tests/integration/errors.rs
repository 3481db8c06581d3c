//! Malformed input of every kind gets its 4xx with an OCI error code: never a 5xx, never a
//! dropped connection.

use reqwest::Method;

use crate::util::*;

/// Method, path, one header, body, expected status and code (empty: any code).
type Case<'a> = (
    Method,
    String,
    Option<(&'a str, &'a str)>,
    Vec<u8>,
    u16,
    &'a str,
);

/// A case with no header and no body.
fn bare(method: Method, path: impl Into<String>, status: u16, code: &str) -> Case<'_> {
    (method, path.into(), None, vec![], status, code)
}

async fn malformed_requests_get_their_4xx() {
    let server = Server::start();
    let c = server.client();
    let image = c.push_image("ok/repo", "v1", unique_seed()).await;
    let good = image.digest.clone();
    let upload = c.start_upload("ok/repo").await;

    let long_name = "a".repeat(256);
    let names = [
        "UPPER",
        "a//b",
        "-lead",
        "trail-",
        "a..b",
        "a___b",
        "a/.b",
        "sp%20ace",
        "ünï",
        long_name.as_str(),
    ];
    let mut cases: Vec<Case> = Vec::new();
    for name in names {
        cases.push(bare(
            Method::GET,
            format!("/v2/{name}/tags/list"),
            400,
            "NAME_INVALID",
        ));
        cases.push(bare(
            Method::GET,
            format!("/v2/{name}/manifests/latest"),
            400,
            "NAME_INVALID",
        ));
        cases.push(bare(
            Method::POST,
            format!("/v2/{name}/blobs/uploads/"),
            400,
            "NAME_INVALID",
        ));
        cases.push(bare(
            Method::HEAD,
            format!("/v2/{name}/blobs/{good}"),
            400,
            "",
        ));
    }
    let long_digest = format!("sha256:{}", "a".repeat(300));
    let digests = [
        "sha256:abc",
        "sha256:ZZZZ",
        "sha256",
        "md5:",
        ":abc",
        "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        long_digest.as_str(),
    ];
    for d in digests {
        cases.push(bare(
            Method::GET,
            format!("/v2/ok/repo/blobs/{d}"),
            400,
            "DIGEST_INVALID",
        ));
        cases.push(bare(
            Method::DELETE,
            format!("/v2/ok/repo/blobs/{d}"),
            400,
            "DIGEST_INVALID",
        ));
        if d.contains(':') {
            // Without a colon it is a tag, and a valid one. A reference that cannot name a
            // manifest names a missing one when read or deleted; a push to it is refused.
            for method in [Method::GET, Method::DELETE] {
                cases.push(bare(
                    method,
                    format!("/v2/ok/repo/manifests/{d}"),
                    404,
                    "MANIFEST_UNKNOWN",
                ));
            }
            cases.push((
                Method::PUT,
                format!("/v2/ok/repo/manifests/{d}"),
                Some(("content-type", OCI_MANIFEST)),
                image.manifest.clone(),
                400,
                "DIGEST_INVALID",
            ));
        }
        cases.push(bare(
            Method::GET,
            format!("/v2/ok/repo/referrers/{d}"),
            400,
            "DIGEST_INVALID",
        ));
        cases.push(bare(
            Method::PUT,
            format!("{upload}?digest={d}"),
            400,
            "DIGEST_INVALID",
        ));
        cases.push((
            Method::POST,
            format!("/v2/ok/repo/blobs/uploads/?digest={d}"),
            None,
            b"x".to_vec(),
            400,
            "DIGEST_INVALID",
        ));
        cases.push(bare(
            Method::POST,
            format!("/v2/ok/repo/blobs/uploads/?mount={d}&from=ok/repo"),
            400,
            "DIGEST_INVALID",
        ));
    }
    cases.push((Method::POST, "/v2/ok/repo/blobs/uploads/?digest=multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8".into(), None, b"x".to_vec(), 400, "DIGEST_INVALID"));
    cases.push(bare(Method::PUT, upload.clone(), 400, "DIGEST_INVALID"));
    cases.push(bare(
        Method::POST,
        format!("/v2/ok/repo/blobs/uploads/?mount={good}&from=BAD//name"),
        400,
        "NAME_INVALID",
    ));
    for tag in [".dot", "-dash", "a:b:c", &"t".repeat(129)] {
        // Reading a reference that cannot name a manifest finds none; pushing to it is refused.
        cases.push(bare(
            Method::GET,
            format!("/v2/ok/repo/manifests/{tag}"),
            404,
            "MANIFEST_UNKNOWN",
        ));
        let code = if tag.contains(':') {
            "DIGEST_INVALID"
        } else {
            "TAG_INVALID"
        };
        cases.push((
            Method::PUT,
            format!("/v2/ok/repo/manifests/{tag}"),
            Some(("content-type", OCI_MANIFEST)),
            image.manifest.clone(),
            400,
            code,
        ));
    }
    for range in [
        "",
        "abc",
        "5",
        "5-",
        "-5",
        "9-3",
        "1-2-3",
        "bytes=x-y",
        "99999999999999999999-99999999999999999999",
    ] {
        cases.push((
            Method::PATCH,
            upload.clone(),
            Some(("content-range", range)),
            b"data".to_vec(),
            400,
            "",
        ));
    }
    cases.push((
        Method::PATCH,
        upload.clone(),
        Some(("content-range", "0-9")),
        b"short".to_vec(),
        400,
        "SIZE_INVALID",
    ));
    cases.push((
        Method::PATCH,
        upload.clone(),
        Some(("content-range", "7-10")),
        b"four".to_vec(),
        416,
        "BLOB_UPLOAD_INVALID",
    ));
    // Behind a redirect, ranges are the storage's business.
    let ranges: &[&str] = if server.deployment.backend.uses_s3() {
        &[]
    } else {
        &["bytes=abc", "bytes=5-2", "bytes=99999-", "bytes=-", "lines"]
    };
    for range in ranges {
        cases.push((
            Method::GET,
            format!("/v2/ok/repo/blobs/{}", sha256(&image.config)),
            Some(("range", range)),
            vec![],
            416,
            "",
        ));
    }
    let manifests: Vec<(&str, Vec<u8>)> = vec![
        (OCI_MANIFEST, b"".to_vec()),
        (OCI_MANIFEST, b"null".to_vec()),
        (OCI_MANIFEST, b"[]".to_vec()),
        (OCI_MANIFEST, b"{\"schemaVersion\":2}".to_vec()),
        (OCI_MANIFEST, b"{\"schemaVersion\":\"2\",\"config\":{},\"layers\":[]}".to_vec()),
        (OCI_MANIFEST, b"\xff\xfe garbage".to_vec()),
        (OCI_INDEX, b"{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"x\",\"digest\":\"sha256:nothex\",\"size\":1}]}".to_vec()),
        (OCI_INDEX, b"{\"schemaVersion\":2,\"manifests\":\"no\"}".to_vec()),
        ("text/plain", image.manifest.clone()),
        ("application/vnd.oci.image.manifest.v1+json", String::from_utf8_lossy(&image.manifest).replace("\"size\":", "\"size\":-").into_bytes()),
    ];
    for (ct, body) in manifests {
        cases.push((
            Method::PUT,
            "/v2/ok/repo/manifests/bad".into(),
            Some(("content-type", ct)),
            body,
            400,
            "MANIFEST_INVALID",
        ));
    }
    cases.push(bare(Method::GET, "/v2/ok/repo/tags/list?n=-1", 400, ""));
    cases.push(bare(Method::GET, "/v2/_catalog?n=x", 400, ""));
    cases.push(bare(
        Method::GET,
        "/v2/ok/repo/nonsense/x",
        404,
        "UNSUPPORTED",
    ));
    cases.push(bare(
        Method::POST,
        "/v2/ok/repo/manifests/v1",
        405,
        "UNSUPPORTED",
    ));
    cases.push(bare(
        Method::PUT,
        "/v2/ok/repo/blobs/uploads/",
        405,
        "UNSUPPORTED",
    ));

    let mut failures = Vec::new();
    for (method, path, header, body, status, code) in cases {
        let mut request = c.request(method.clone(), &path).body(body);
        if let Some((k, v)) = header {
            request = request.header(k, v);
        }
        let a = c.send(request).await;
        let ok_status = a.status.as_u16() == status;
        let ok_code = code.is_empty() || method == Method::HEAD || a.error_code() == code;
        let has_message = method == Method::HEAD
            || serde_json::from_slice::<serde_json::Value>(&a.body)
                .ok()
                .and_then(|j| j["errors"][0]["message"].as_str().map(|m| !m.is_empty()))
                .unwrap_or(false);
        if !(ok_status && ok_code && has_message) {
            failures.push(format!(
                "{method} {path} {header:?}: got {} {}, want {status} {code}",
                a.status,
                String::from_utf8_lossy(&a.body)
            ));
        }
        assert!(!a.status.is_server_error(), "{method} {path}: server error");
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The registry is still healthy and the upload untouched by all of the above.
    let status = c.get(&upload).await;
    status.expect(204, None);
    assert_eq!(status.header("range"), Some("0-0"));
    assert!(
        !server.log_text().contains("panicked"),
        "no panic in the log"
    );
}

/// The distribution-spec conformance suites (v1.1.0, v1.1.1 and the last Ginkgo-based one)
/// read this exact reference in "HEAD request to nonexistent manifest should return 404" and
/// "GET nonexistent manifest should return 404".
async fn conformance_invalid_manifest_name_reads_as_missing() {
    let server = Server::start();
    let c = server.client();
    c.push_image("conformance/repo", "v1", unique_seed()).await;
    let path = "/v2/conformance/repo/manifests/.INVALID_MANIFEST_NAME";
    c.call(Method::HEAD, path).await.expect(404, None);
    c.get(path).await.expect(404, Some("MANIFEST_UNKNOWN"));
    c.call(Method::DELETE, path)
        .await
        .expect(404, Some("MANIFEST_UNKNOWN"));
    // In a repository that does not exist, the repository is what is missing.
    c.get("/v2/conformance/none/manifests/.INVALID_MANIFEST_NAME")
        .await
        .expect(404, Some("NAME_UNKNOWN"));
    // A push to it is still refused: it is not a tag.
    let image = c.push_image("conformance/repo", "v2", unique_seed()).await;
    c.put_manifest(
        "conformance/repo",
        ".INVALID_MANIFEST_NAME",
        OCI_MANIFEST,
        &image.manifest,
    )
    .await
    .expect(400, Some("TAG_INVALID"));
}

crate::harness::trials! {
    malformed_requests_get_their_4xx;
    conformance_invalid_manifest_name_reads_as_missing;
}
