//! Every endpoint of the distribution spec, with its status codes and headers.
//!
//! One file on purpose, though it is long: its tests walk the spec's endpoints in the spec's
//! order (version check, blobs and uploads, mounts, manifests, referrers, deletion, listings),
//! so that it reads as the checklist it is; each test is self-contained and uses only the
//! client in `util/`, so there is no module-private machinery to split along; and the
//! harness names each test after its module (`api::sha512_blobs`, used in filters and CI
//! reports), so moving tests into submodules would either rename them or list them away
//! from their bodies.

use reqwest::Method;

use crate::util::*;

async fn api_version_check() {
    let server = Server::start();
    let c = server.client();
    let a = c.get("/v2/").await;
    a.expect(200, None);
    assert_eq!(
        a.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    c.get("/v2").await.expect(200, None);
    let a = c.call(Method::POST, "/v2/").await;
    a.expect(405, Some("UNSUPPORTED"));
    assert!(a.header("allow").unwrap().contains("GET"));
}

async fn health_probes() {
    let server = Server::start();
    let c = server.client();
    c.get("/healthz").await.expect(200, None);
    c.get("/readyz").await.expect(200, None);
}

async fn blob_monolithic_push_head_get_range_delete() {
    let server = Server::start();
    let c = server.client();
    let data = random_bytes(300_000, unique_seed());
    let digest = c.push_blob("lib/app", &data).await;

    let head = c
        .call(Method::HEAD, &format!("/v2/lib/app/blobs/{digest}"))
        .await;
    head.expect(200, None);
    assert_eq!(head.header("content-length"), Some("300000"));
    assert_eq!(head.header("docker-content-digest"), Some(digest.as_str()));
    assert!(head.body.is_empty());

    let get = c
        .get_following(&format!("/v2/lib/app/blobs/{digest}"))
        .await;
    get.expect(200, None);
    assert_eq!(&get.body[..], &data[..]);

    if !server.deployment.backend.uses_s3() {
        let get = c.get(&format!("/v2/lib/app/blobs/{digest}")).await;
        assert_eq!(get.header("docker-content-digest"), Some(digest.as_str()));
        assert_eq!(get.header("content-type"), Some("application/octet-stream"));
        let part = c
            .send(
                c.request(Method::GET, &format!("/v2/lib/app/blobs/{digest}"))
                    .header("range", "bytes=100-199"),
            )
            .await;
        part.expect(206, None);
        assert_eq!(part.header("content-range"), Some("bytes 100-199/300000"));
        assert_eq!(&part.body[..], &data[100..200]);
        let suffix = c
            .send(
                c.request(Method::GET, &format!("/v2/lib/app/blobs/{digest}"))
                    .header("range", "bytes=-10"),
            )
            .await;
        suffix.expect(206, None);
        assert_eq!(&suffix.body[..], &data[data.len() - 10..]);
        let beyond = c
            .send(
                c.request(Method::GET, &format!("/v2/lib/app/blobs/{digest}"))
                    .header("range", "bytes=300000-"),
            )
            .await;
        beyond.expect(416, None);
        assert_eq!(beyond.header("content-range"), Some("bytes */300000"));
    }

    c.call(Method::DELETE, &format!("/v2/lib/app/blobs/{digest}"))
        .await
        .expect(202, None);
    c.call(Method::HEAD, &format!("/v2/lib/app/blobs/{digest}"))
        .await
        .expect(404, None);
    c.get(&format!("/v2/lib/app/blobs/{digest}"))
        .await
        .expect(404, Some("BLOB_UNKNOWN"));
    c.call(Method::DELETE, &format!("/v2/lib/app/blobs/{digest}"))
        .await
        .expect(404, Some("BLOB_UNKNOWN"));
    c.get(&format!("/v2/no/such/repo/blobs/{digest}"))
        .await
        .expect(404, Some("NAME_UNKNOWN"));
}

async fn blob_is_only_readable_through_linked_repositories() {
    let server = Server::start();
    let c = server.client();
    let digest = c.push_blob("one", b"linked to one only").await;
    c.push_blob("two", b"something else").await;
    c.get(&format!("/v2/two/blobs/{digest}"))
        .await
        .expect(404, Some("BLOB_UNKNOWN"));
    c.call(Method::HEAD, &format!("/v2/two/blobs/{digest}"))
        .await
        .expect(404, None);
}

async fn upload_post_answers_location_range_uuid_and_min_chunk() {
    let server = Server::start();
    let c = server.client();
    let a = c.call(Method::POST, "/v2/a/b/c/blobs/uploads/").await;
    a.expect(202, None);
    let location = a.header("location").unwrap();
    let uuid = a.header("docker-upload-uuid").unwrap();
    assert!(location.starts_with("/v2/a/b/c/blobs/uploads/"));
    assert!(location.ends_with(uuid));
    assert_eq!(a.header("range"), Some("0-0"));
    assert!(
        a.header("oci-chunk-min-length")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    let status = c.get(location).await;
    status.expect(204, None);
    assert_eq!(status.header("range"), Some("0-0"));
    assert_eq!(status.header("location"), Some(location));
}

async fn single_post_upload_with_digest() {
    let server = Server::start();
    let c = server.client();
    let data = random_bytes(70_000, unique_seed());
    let digest = sha256(&data);
    let a = c
        .send(
            c.request(Method::POST, "/v2/single/blobs/uploads/")
                .query(&[("digest", &digest)])
                .body(data.clone()),
        )
        .await;
    a.expect(201, None);
    assert_eq!(
        a.header("location"),
        Some(format!("/v2/single/blobs/{digest}").as_str())
    );
    assert_eq!(a.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(
        &c.get_following(&format!("/v2/single/blobs/{digest}"))
            .await
            .body[..],
        &data[..]
    );

    // A wrong digest publishes nothing.
    let other = sha256(b"not these bytes");
    c.send(
        c.request(Method::POST, "/v2/single/blobs/uploads/")
            .query(&[("digest", &other)])
            .body(data.clone()),
    )
    .await
    .expect(400, Some("DIGEST_INVALID"));
    c.call(Method::HEAD, &format!("/v2/single/blobs/{other}"))
        .await
        .expect(404, None);
}

async fn sha512_blobs() {
    let server = Server::start();
    let c = server.client();
    let data = random_bytes(123_457, unique_seed());
    let digest = sha512(&data);
    // Monolithic POST + PUT.
    let location = c.start_upload("s512").await;
    c.finish_upload(&location, &digest, &data)
        .await
        .expect(201, None);
    assert_eq!(
        &c.get_following(&format!("/v2/s512/blobs/{digest}"))
            .await
            .body[..],
        &data[..]
    );
    // Chunked, announced with digest-algorithm.
    let data2 = random_bytes(50_000, unique_seed() + 1);
    let digest2 = sha512(&data2);
    let location = c
        .start_upload_with("s512", "?digest-algorithm=sha512")
        .await;
    let a = c
        .send(
            c.request(Method::PATCH, &location)
                .header("content-range", "0-24999")
                .body(data2[..25_000].to_vec()),
        )
        .await;
    a.expect(202, None);
    let location = a.header("location").unwrap().to_owned();
    c.send(
        c.request(Method::PUT, &location)
            .query(&[("digest", &digest2)])
            .header("content-range", "25000-49999")
            .body(data2[25_000..].to_vec()),
    )
    .await
    .expect(201, None);
    // Chunked without announcement: verified by reading the blob once.
    let data3 = random_bytes(40_000, unique_seed() + 2);
    let digest3 = sha512(&data3);
    let location = c.start_upload("s512").await;
    let a = c
        .send(c.request(Method::PATCH, &location).body(data3.clone()))
        .await;
    a.expect(202, None);
    c.send(
        c.request(Method::PUT, a.header("location").unwrap())
            .query(&[("digest", &sha512(b"wrong"))]),
    )
    .await
    .expect(400, Some("DIGEST_INVALID"));
    let location = c.start_upload("s512").await;
    let a = c
        .send(c.request(Method::PATCH, &location).body(data3.clone()))
        .await;
    c.send(
        c.request(Method::PUT, a.header("location").unwrap())
            .query(&[("digest", &digest3)]),
    )
    .await
    .expect(201, None);
    assert_eq!(
        &c.get_following(&format!("/v2/s512/blobs/{digest3}"))
            .await
            .body[..],
        &data3[..]
    );
}

async fn chunked_upload_with_content_range_status_and_out_of_order_chunk() {
    let server = Server::start();
    let c = server.client();
    let data = random_bytes(3 * 100_000 + 17, unique_seed());
    let digest = sha256(&data);
    let mut location = c.start_upload("chunks").await;
    for (i, chunk) in data.chunks(100_000).enumerate().take(3) {
        let start = i * 100_000;
        let end = start + chunk.len() - 1;
        let a = c
            .send(
                c.request(Method::PATCH, &location)
                    .header("content-type", "application/octet-stream")
                    .header("content-range", format!("{start}-{end}"))
                    .body(chunk.to_vec()),
            )
            .await;
        a.expect(202, None);
        assert_eq!(a.header("range"), Some(format!("0-{end}").as_str()));
        assert!(a.header("docker-upload-uuid").is_some());
        location = a.header("location").unwrap().to_owned();
    }
    // A chunk that does not continue where the upload stands.
    let a = c
        .send(
            c.request(Method::PATCH, &location)
                .header("content-range", "100-199")
                .body(vec![0u8; 100]),
        )
        .await;
    a.expect(416, Some("BLOB_UPLOAD_INVALID"));
    assert_eq!(a.header("range"), Some("0-299999"));
    assert!(a.header("location").is_some());
    let status = c.get(&location).await;
    status.expect(204, None);
    assert_eq!(status.header("range"), Some("0-299999"));
    // The last chunk comes with the closing PUT.
    let a = c
        .send(
            c.request(Method::PUT, &location)
                .query(&[("digest", &digest)])
                .header("content-range", "300000-300016")
                .body(data[300_000..].to_vec()),
        )
        .await;
    a.expect(201, None);
    assert_eq!(a.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(
        &c.get_following(&format!("/v2/chunks/blobs/{digest}"))
            .await
            .body[..],
        &data[..]
    );
    // The session is over.
    c.get(&location)
        .await
        .expect(404, Some("BLOB_UPLOAD_UNKNOWN"));
}

async fn streaming_patch_without_length_like_docker_and_skopeo() {
    let server = Server::start();
    let c = server.client();
    let data = random_bytes(20 * 1024 * 1024 + 333, unique_seed());
    let digest = sha256(&data);
    let location = c.start_upload("stream").await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let a = c
        .send(
            c.request(Method::PATCH, &location)
                .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks))),
        )
        .await;
    a.expect(202, None);
    assert_eq!(
        a.header("range"),
        Some(format!("0-{}", data.len() - 1).as_str())
    );
    c.send(
        c.request(Method::PUT, a.header("location").unwrap())
            .query(&[("digest", &digest)]),
    )
    .await
    .expect(201, None);
    let got = c.get_following(&format!("/v2/stream/blobs/{digest}")).await;
    assert_eq!(got.body.len(), data.len());
    assert!(got.body[..] == data[..]);
}

async fn cancelled_upload_is_gone() {
    let server = Server::start();
    let c = server.client();
    let location = c.start_upload("cancel").await;
    c.send(c.request(Method::PATCH, &location).body(vec![1u8; 1000]))
        .await
        .expect(202, None);
    c.call(Method::DELETE, &location).await.expect(204, None);
    c.get(&location)
        .await
        .expect(404, Some("BLOB_UPLOAD_UNKNOWN"));
    c.send(c.request(Method::PATCH, &location).body(vec![1u8; 10]))
        .await
        .expect(404, Some("BLOB_UPLOAD_UNKNOWN"));
    c.call(Method::DELETE, &location)
        .await
        .expect(404, Some("BLOB_UPLOAD_UNKNOWN"));
}

async fn upload_sessions_belong_to_their_repository() {
    let server = Server::start();
    let c = server.client();
    let location = c.start_upload("mine").await;
    let id = location.rsplit('/').next().unwrap();
    c.get(&format!("/v2/theirs/blobs/uploads/{id}"))
        .await
        .expect(404, Some("BLOB_UPLOAD_UNKNOWN"));
    c.get("/v2/mine/blobs/uploads/not-a-uuid")
        .await
        .expect(404, Some("BLOB_UPLOAD_UNKNOWN"));
}

async fn cross_repository_mount() {
    let server = Server::start();
    let c = server.client();
    let digest = c.push_blob("source", b"mount me").await;
    let a = c
        .call(
            Method::POST,
            &format!("/v2/target/blobs/uploads/?mount={digest}&from=source"),
        )
        .await;
    a.expect(201, None);
    assert_eq!(
        a.header("location"),
        Some(format!("/v2/target/blobs/{digest}").as_str())
    );
    assert_eq!(a.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(
        &c.get_following(&format!("/v2/target/blobs/{digest}"))
            .await
            .body[..],
        b"mount me"
    );
    // Not in the named source: a new session instead.
    let missing = sha256(b"absent");
    let a = c
        .call(
            Method::POST,
            &format!("/v2/target/blobs/uploads/?mount={missing}&from=source"),
        )
        .await;
    a.expect(202, None);
    assert!(a.header("location").unwrap().contains("/blobs/uploads/"));
    let a = c
        .call(
            Method::POST,
            &format!("/v2/other/blobs/uploads/?mount={digest}&from=elsewhere"),
        )
        .await;
    a.expect(202, None);
    // Without `from`: found in any repository.
    let a = c
        .call(
            Method::POST,
            &format!("/v2/third/blobs/uploads/?mount={digest}"),
        )
        .await;
    a.expect(201, None);
    c.call(Method::HEAD, &format!("/v2/third/blobs/{digest}"))
        .await
        .expect(200, None);
}

async fn image_manifest_push_pull_by_tag_and_digest() {
    let server = Server::start();
    let c = server.client();
    let image = c.push_image("img", "v1", unique_seed()).await;
    let get = c.get("/v2/img/manifests/v1").await;
    get.expect(200, None);
    assert_eq!(&get.body[..], &image.manifest[..]);
    assert_eq!(get.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(
        get.header("docker-content-digest"),
        Some(image.digest.as_str())
    );
    let head = c.call(Method::HEAD, "/v2/img/manifests/v1").await;
    head.expect(200, None);
    assert_eq!(
        head.header("content-length"),
        Some(image.manifest.len().to_string().as_str())
    );
    assert_eq!(
        head.header("docker-content-digest"),
        Some(image.digest.as_str())
    );
    assert!(head.body.is_empty());
    let by_digest = c.get(&format!("/v2/img/manifests/{}", image.digest)).await;
    by_digest.expect(200, None);
    assert_eq!(&by_digest.body[..], &image.manifest[..]);
    // PUT by digest; Location and digest headers.
    let a = c
        .put_manifest("img", &image.digest, OCI_MANIFEST, &image.manifest)
        .await;
    a.expect(201, None);
    assert_eq!(
        a.header("location"),
        Some(format!("/v2/img/manifests/{}", image.digest).as_str())
    );
    assert_eq!(
        a.header("docker-content-digest"),
        Some(image.digest.as_str())
    );
    c.get("/v2/img/manifests/nope")
        .await
        .expect(404, Some("MANIFEST_UNKNOWN"));
    c.get("/v2/nothing/here/manifests/v1")
        .await
        .expect(404, Some("NAME_UNKNOWN"));
}

async fn manifest_bytes_are_stored_exactly_and_digest_must_match() {
    let server = Server::start();
    let c = server.client();
    let config = c.push_blob("exact", b"{}").await;
    let pretty = format!(
        "{{\n   \"schemaVersion\": 2,\n  \"mediaType\": \"{OCI_MANIFEST}\",\n  \"config\": {{\"mediaType\": \"application/vnd.oci.image.config.v1+json\", \"digest\": \"{config}\", \"size\": 2}},\n  \"layers\": []\n}}\n\n"
    );
    let digest = sha256(pretty.as_bytes());
    c.put_manifest("exact", "pretty", OCI_MANIFEST, pretty.as_bytes())
        .await
        .expect(201, None);
    let got = c.get(&format!("/v2/exact/manifests/{digest}")).await;
    assert_eq!(&got.body[..], pretty.as_bytes());
    let wrong = sha256(b"other");
    c.put_manifest("exact", &wrong, OCI_MANIFEST, pretty.as_bytes())
        .await
        .expect(400, Some("DIGEST_INVALID"));
    // sha512 manifest digests.
    let d512 = sha512(pretty.as_bytes());
    c.put_manifest("exact", &d512, OCI_MANIFEST, pretty.as_bytes())
        .await
        .expect(201, None);
    c.get(&format!("/v2/exact/manifests/{d512}"))
        .await
        .expect(200, None);
}

async fn manifest_references_must_be_present() {
    let server = Server::start();
    let c = server.client();
    let config = c.push_blob("refs", b"{\"c\":1}").await;
    let missing_layer = sha256(b"never pushed");
    let m = image_manifest(&config, 7, &[(&missing_layer, 12)], None);
    let a = c.put_manifest("refs", "t", OCI_MANIFEST, &m).await;
    a.expect(400, Some("MANIFEST_BLOB_UNKNOWN"));
    assert_eq!(
        a.json()["errors"][0]["detail"]["digest"],
        missing_layer.as_str()
    );
    // A blob of another repository does not count.
    let elsewhere = c.push_blob("elsewhere", b"layer").await;
    let m = image_manifest(&config, 7, &[(&elsewhere, 5)], None);
    c.put_manifest("refs", "t", OCI_MANIFEST, &m)
        .await
        .expect(400, Some("MANIFEST_BLOB_UNKNOWN"));
    // Index children must be manifests of the repository.
    let absent_child = sha256(b"no such manifest");
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{absent_child}","size":10}}]}}"#
    );
    let a = c
        .put_manifest("refs", "idx", OCI_INDEX, index.as_bytes())
        .await;
    a.expect(400, Some("MANIFEST_BLOB_UNKNOWN"));
    c.get("/v2/refs/manifests/idx").await.expect(404, None);
}

async fn index_and_docker_manifest_list() {
    let server = Server::start();
    let c = server.client();
    let amd = c.push_image("multi", "amd64", unique_seed()).await;
    let arm = c.push_image("multi", "arm64", unique_seed() + 1).await;
    for (media_type, tag) in [(OCI_INDEX, "oci"), (DOCKER_LIST, "docker")] {
        let child_type = OCI_MANIFEST;
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{media_type}","manifests":[{{"mediaType":"{child_type}","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}},{{"mediaType":"{child_type}","digest":"{}","size":{},"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}]}}"#,
            amd.digest,
            amd.manifest.len(),
            arm.digest,
            arm.manifest.len()
        );
        c.put_manifest("multi", tag, media_type, index.as_bytes())
            .await
            .expect(201, None);
        let got = c.get(&format!("/v2/multi/manifests/{tag}")).await;
        got.expect(200, None);
        assert_eq!(got.header("content-type"), Some(media_type));
        assert_eq!(&got.body[..], index.as_bytes());
    }
}

async fn docker_schema2_manifest() {
    let server = Server::start();
    let c = server.client();
    let config = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}".to_vec();
    let layer = random_bytes(5000, unique_seed());
    let cd = c.push_blob("docker", &config).await;
    let ld = c.push_blob("docker", &layer).await;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{cd}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":{},"digest":"{ld}"}}]}}"#,
        config.len(),
        layer.len()
    );
    c.put_manifest("docker", "latest", DOCKER_MANIFEST, manifest.as_bytes())
        .await
        .expect(201, None);
    let got = c.get("/v2/docker/manifests/latest").await;
    assert_eq!(got.header("content-type"), Some(DOCKER_MANIFEST));
    assert_eq!(&got.body[..], manifest.as_bytes());
}

async fn manifest_limits_and_validation() {
    let server = Server::start();
    let c = server.client();
    let big = vec![b' '; 4 * 1024 * 1024 + 1];
    c.put_manifest("limits", "big", OCI_MANIFEST, &big)
        .await
        .expect(413, None);
    c.put_manifest("limits", "bad", OCI_MANIFEST, b"{not json")
        .await
        .expect(400, Some("MANIFEST_INVALID"));
    let config = c.push_blob("limits", b"{}").await;
    let m = image_manifest(&config, 2, &[], None);
    c.put_manifest("limits", "mismatch", OCI_INDEX, &m)
        .await
        .expect(400, Some("MANIFEST_INVALID"));
    c.put_manifest(
        "limits",
        "schema1",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        &m,
    )
    .await
    .expect(400, Some("MANIFEST_INVALID"));
    // Exactly 4 MiB is accepted (padding whitespace keeps the JSON valid).
    let mut padded = m.clone();
    padded.resize(4 * 1024 * 1024, b' ');
    c.put_manifest("limits", "four-mib", OCI_MANIFEST, &padded)
        .await
        .expect(201, None);
}

async fn artifact_manifest_subject_and_referrers() {
    let server = Server::start();
    let c = server.client();
    let subject = c.push_image("art", "app", unique_seed()).await;
    let empty = c.push_blob("art", b"{}").await;
    let sbom = c.push_blob("art", b"sbom contents").await;
    let subject_desc = format!(
        r#""subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{}}}"#,
        subject.digest,
        subject.manifest.len()
    );
    let artifact = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/vnd.example.sbom.v1","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2,"data":"e30="}},"layers":[{{"mediaType":"application/spdx+json","digest":"{sbom}","size":13}}],{subject_desc},"annotations":{{"org.opencontainers.image.created":"2026-01-01T00:00:00Z"}}}}"#
    );
    let a = c
        .put_manifest(
            "art",
            &sha256(artifact.as_bytes()),
            OCI_MANIFEST,
            artifact.as_bytes(),
        )
        .await;
    a.expect(201, None);
    assert_eq!(a.header("oci-subject"), Some(subject.digest.as_str()));
    // A signature-like referrer without artifactType: the config media type stands in.
    let sig_config = c.push_blob("art", b"{\"sig\":true}").await;
    let signature = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.example.signature.config","digest":"{sig_config}","size":12}},"layers":[],{subject_desc}}}"#
    );
    c.put_manifest(
        "art",
        &sha256(signature.as_bytes()),
        OCI_MANIFEST,
        signature.as_bytes(),
    )
    .await
    .expect(201, None);

    let r = c
        .get(&format!("/v2/art/referrers/{}", subject.digest))
        .await;
    r.expect(200, None);
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    let index = r.json();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], OCI_INDEX);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 2);
    let sbom_entry = manifests
        .iter()
        .find(|m| m["digest"] == sha256(artifact.as_bytes()))
        .unwrap();
    assert_eq!(
        sbom_entry["artifactType"],
        "application/vnd.example.sbom.v1"
    );
    assert_eq!(sbom_entry["size"], artifact.len());
    assert_eq!(sbom_entry["mediaType"], OCI_MANIFEST);
    assert_eq!(
        sbom_entry["annotations"]["org.opencontainers.image.created"],
        "2026-01-01T00:00:00Z"
    );
    let sig_entry = manifests
        .iter()
        .find(|m| m["digest"] == sha256(signature.as_bytes()))
        .unwrap();
    assert_eq!(
        sig_entry["artifactType"],
        "application/vnd.example.signature.config"
    );

    let filtered = c
        .get(&format!(
            "/v2/art/referrers/{}?artifactType=application/vnd.example.sbom.v1",
            subject.digest
        ))
        .await;
    filtered.expect(200, None);
    assert_eq!(filtered.header("oci-filters-applied"), Some("artifactType"));
    assert_eq!(filtered.json()["manifests"].as_array().unwrap().len(), 1);

    // Unknown subject (and unknown repository): an empty index, never 404.
    for path in [
        format!("/v2/art/referrers/{}", sha256(b"x")),
        format!("/v2/unknown/repo/referrers/{}", sha256(b"x")),
    ] {
        let empty = c.get(&path).await;
        empty.expect(200, None);
        assert_eq!(empty.json()["manifests"].as_array().unwrap().len(), 0);
    }
    c.get("/v2/art/referrers/sha256:bad")
        .await
        .expect(400, Some("DIGEST_INVALID"));

    // The referrer goes away with its manifest.
    c.call(
        Method::DELETE,
        &format!("/v2/art/manifests/{}", sha256(signature.as_bytes())),
    )
    .await
    .expect(202, None);
    let r = c
        .get(&format!("/v2/art/referrers/{}", subject.digest))
        .await;
    assert_eq!(r.json()["manifests"].as_array().unwrap().len(), 1);
}

async fn subject_may_be_pushed_after_its_referrer() {
    let server = Server::start();
    let c = server.client();
    let config = c.push_blob("order", b"{}").await;
    let absent_subject = sha256(b"subject pushed later");
    let referrer = image_manifest(
        &config,
        2,
        &[],
        Some(&format!(
            r#""subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{absent_subject}","size":100}}"#
        )),
    );
    let a = c
        .put_manifest("order", &sha256(&referrer), OCI_MANIFEST, &referrer)
        .await;
    a.expect(201, None);
    assert_eq!(a.header("oci-subject"), Some(absent_subject.as_str()));
    let r = c
        .get(&format!("/v2/order/referrers/{absent_subject}"))
        .await;
    assert_eq!(r.json()["manifests"].as_array().unwrap().len(), 1);
}

async fn delete_by_tag_and_by_digest() {
    let server = Server::start();
    let c = server.client();
    let image = c.push_image("del", "one", unique_seed()).await;
    c.put_manifest("del", "two", OCI_MANIFEST, &image.manifest)
        .await
        .expect(201, None);
    c.call(Method::DELETE, "/v2/del/manifests/one")
        .await
        .expect(202, None);
    c.get("/v2/del/manifests/one")
        .await
        .expect(404, Some("MANIFEST_UNKNOWN"));
    c.get("/v2/del/manifests/two").await.expect(200, None);
    c.get(&format!("/v2/del/manifests/{}", image.digest))
        .await
        .expect(200, None);
    c.call(
        Method::DELETE,
        &format!("/v2/del/manifests/{}", image.digest),
    )
    .await
    .expect(202, None);
    c.get("/v2/del/manifests/two")
        .await
        .expect(404, Some("MANIFEST_UNKNOWN"));
    c.get(&format!("/v2/del/manifests/{}", image.digest))
        .await
        .expect(404, Some("MANIFEST_UNKNOWN"));
    c.call(Method::DELETE, "/v2/del/manifests/one")
        .await
        .expect(404, Some("MANIFEST_UNKNOWN"));
    c.call(Method::DELETE, "/v2/nowhere/manifests/one")
        .await
        .expect(404, Some("NAME_UNKNOWN"));
    let tags = c.get("/v2/del/tags/list").await;
    assert_eq!(tags.json()["tags"].as_array().unwrap().len(), 0);
}

async fn tag_list_pagination() {
    let server = Server::start();
    let c = server.client();
    let image = c.push_image("paged", "base", unique_seed()).await;
    let names = ["a", "B", "b", "c10", "c2", "d", "e-1", "e_1", "z"];
    for tag in names {
        c.put_manifest("paged", tag, OCI_MANIFEST, &image.manifest)
            .await
            .expect(201, None);
    }
    let mut expected: Vec<&str> = names.iter().copied().chain(["base"]).collect();
    expected.sort();
    let all = c.get("/v2/paged/tags/list").await;
    all.expect(200, None);
    assert_eq!(all.json()["name"], "paged");
    let got: Vec<String> = serde_json::from_value(all.json()["tags"].clone()).unwrap();
    assert_eq!(got, expected);
    assert!(all.header("link").is_none());

    // Walk pages of 3 by following Link headers.
    let mut path = "/v2/paged/tags/list?n=3".to_owned();
    let mut walked = Vec::new();
    loop {
        let page = c.get(&path).await;
        page.expect(200, None);
        let tags: Vec<String> = serde_json::from_value(page.json()["tags"].clone()).unwrap();
        assert!(tags.len() <= 3);
        walked.extend(tags);
        match page.header("link") {
            Some(link) => {
                assert!(link.ends_with("rel=\"next\""), "{link}");
                path = link
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap()
                    .to_owned();
            }
            None => break,
        }
    }
    assert_eq!(walked, expected);

    let after = c.get("/v2/paged/tags/list?n=2&last=c2").await;
    let tags: Vec<String> = serde_json::from_value(after.json()["tags"].clone()).unwrap();
    assert_eq!(tags, vec!["d", "e-1"]);
    let only_last = c.get("/v2/paged/tags/list?last=e_1").await;
    let tags: Vec<String> = serde_json::from_value(only_last.json()["tags"].clone()).unwrap();
    assert_eq!(tags, vec!["z"]);
    let zero = c.get("/v2/paged/tags/list?n=0").await;
    zero.expect(200, None);
    assert_eq!(zero.json()["tags"].as_array().unwrap().len(), 0);
    assert!(zero.header("link").is_none());
    c.get("/v2/never/pushed/tags/list")
        .await
        .expect(404, Some("NAME_UNKNOWN"));
    c.get("/v2/paged/tags/list?n=lots").await.expect(400, None);
}

async fn catalog_pagination() {
    let server = Server::start();
    let c = server.client();
    let repos = ["x/b", "x/a", "y", "a/b/c"];
    for r in repos {
        c.push_blob(r, r.as_bytes()).await;
    }
    let all = c.get("/v2/_catalog").await;
    all.expect(200, None);
    let got: Vec<String> = serde_json::from_value(all.json()["repositories"].clone()).unwrap();
    assert_eq!(got, vec!["a/b/c", "x/a", "x/b", "y"]);
    let page = c.get("/v2/_catalog?n=2").await;
    let got: Vec<String> = serde_json::from_value(page.json()["repositories"].clone()).unwrap();
    assert_eq!(got, vec!["a/b/c", "x/a"]);
    let link = page.header("link").unwrap();
    assert!(link.starts_with("</v2/_catalog?n=2&last=x%2Fa>"), "{link}");
    let next = c.get("/v2/_catalog?n=2&last=x/a").await;
    let got: Vec<String> = serde_json::from_value(next.json()["repositories"].clone()).unwrap();
    assert_eq!(got, vec!["x/b", "y"]);
    assert!(next.header("link").is_none());
}

/// Blobs are read in pieces (1 MiB on the directory store, read ahead of the connection):
/// whole blobs and ranges that start, end or cross inside a piece come back exact, a freshly
/// pushed blob as well as one pulled before.
async fn ranges_across_read_pieces_are_exact() {
    let server = Server::start_with(&[("BERTH_REDIRECT", "false")]);
    let c = server.client();
    let mib = 1024 * 1024;
    let data = random_bytes(2 * mib + mib / 2 + 123, unique_seed());
    let digest = c.push_blob("lib/pieces", &data).await;
    let path = format!("/v2/lib/pieces/blobs/{digest}");
    for _ in 0..2 {
        let whole = c.get(&path).await;
        whole.expect(200, None);
        assert!(whole.body[..] == data[..], "the whole blob");
    }
    let last = data.len() - 1;
    for (first, end) in [
        (0, mib - 1),
        (mib - 1, mib),
        (mib - 10, 2 * mib + 10),
        (4097, 2 * mib + 4095),
        (2 * mib, last),
        (last, last),
    ] {
        let part = c
            .send(
                c.request(Method::GET, &path)
                    .header("range", format!("bytes={first}-{end}")),
            )
            .await;
        part.expect(206, None);
        let expected = format!("bytes {first}-{end}/{}", data.len());
        assert_eq!(part.header("content-range"), Some(expected.as_str()));
        assert!(
            part.body[..] == data[first..=end],
            "bytes {first}-{end}: {} bytes came back",
            part.body.len()
        );
    }
}

crate::harness::trials! {
    api_version_check;
    health_probes;
    blob_monolithic_push_head_get_range_delete;
    blob_is_only_readable_through_linked_repositories;
    upload_post_answers_location_range_uuid_and_min_chunk;
    single_post_upload_with_digest;
    sha512_blobs;
    chunked_upload_with_content_range_status_and_out_of_order_chunk;
    streaming_patch_without_length_like_docker_and_skopeo;
    cancelled_upload_is_gone;
    upload_sessions_belong_to_their_repository;
    cross_repository_mount;
    image_manifest_push_pull_by_tag_and_digest;
    manifest_bytes_are_stored_exactly_and_digest_must_match;
    manifest_references_must_be_present;
    index_and_docker_manifest_list;
    docker_schema2_manifest;
    manifest_limits_and_validation;
    artifact_manifest_subject_and_referrers;
    subject_may_be_pushed_after_its_referrer;
    delete_by_tag_and_by_digest;
    tag_list_pagination;
    catalog_pagination;
    ranges_across_read_pieces_are_exact;
}
