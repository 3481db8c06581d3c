//! Berth as a library: a registry assembled in-process from stores and options, served with
//! `berth::http`, including the hooks that only code can set.

use std::sync::Arc;
use std::time::Duration;

use berth::Registry;
use berth::http::Api;
use berth::metadata::memory::MemoryMetadataStore;
use berth::storage::memory::MemoryBlobStore;
use reqwest::Method;

use crate::util::*;

async fn serve(api: Api) -> Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let health = berth::http::health_router(api.registry().clone());
    let app = api.router().merge(health);
    tokio::spawn(berth::http::serve(
        listener,
        app,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    Client::new(&format!("http://{addr}"))
}

fn memory_registry() -> berth::RegistryBuilder {
    Registry::builder(
        Arc::new(MemoryBlobStore::new(8 << 20)),
        Arc::new(MemoryMetadataStore::new()),
    )
}

async fn blob_location_hook_redirects_to_a_cdn() {
    let api = Api::new(memory_registry().build()).blob_location(|repository, descriptor| {
        (repository.as_str() == "cdn").then(|| {
            format!(
                "https://cdn.example.com/{}?size={}",
                descriptor.digest, descriptor.size
            )
        })
    });
    let c = serve(api).await;
    let digest = c.push_blob("cdn", b"served elsewhere").await;
    let a = c.get(&format!("/v2/cdn/blobs/{digest}")).await;
    a.expect(307, None);
    assert_eq!(
        a.header("location"),
        Some(format!("https://cdn.example.com/{digest}?size=16").as_str())
    );
    // The hook declines other repositories: Berth serves them itself.
    let other = c.push_blob("local", b"served here").await;
    let a = c.get(&format!("/v2/local/blobs/{other}")).await;
    a.expect(200, None);
    assert_eq!(&a.body[..], b"served here");
}

async fn upload_location_hook_sets_absolute_locations() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let api = Api::new(memory_registry().build()).upload_location(move |repository, id| {
        format!("http://{addr}/v2/{repository}/blobs/uploads/{id}?via=hook")
    });
    tokio::spawn(berth::http::serve(
        listener,
        api.router(),
        std::future::pending(),
        Duration::from_secs(1),
    ));
    let c = Client::new(&format!("http://{addr}"));
    let a = c.call(Method::POST, "/v2/abs/blobs/uploads/").await;
    a.expect(202, None);
    let location = a.header("location").unwrap().to_owned();
    assert!(
        location.starts_with(&format!("http://{addr}/v2/abs/blobs/uploads/"))
            && location.ends_with("?via=hook"),
        "{location}"
    );
    let a = c
        .send(c.request(Method::PATCH, &location).body(b"abc".to_vec()))
        .await;
    a.expect(202, None);
    assert_eq!(a.header("location"), Some(location.as_str()));
    let digest = sha256(b"abc");
    c.send(c.request(Method::PUT, &format!("{location}&digest={digest}")))
        .await
        .expect(201, None);
    assert_eq!(
        &c.get(&format!("/v2/abs/blobs/{digest}")).await.body[..],
        b"abc"
    );
}

async fn options_set_through_the_builder() {
    let registry = memory_registry()
        .referrers_api(false)
        .single_request_uploads(false)
        .max_page_size(Some(1))
        .max_manifest_size(1024)
        .build();
    let api = Api::new(registry)
        .tag_digest_header(false)
        .link_headers(false)
        .chunk_min_length(123);
    let c = serve(api).await;
    let a = c.call(Method::POST, "/v2/built/blobs/uploads/").await;
    assert_eq!(a.header("oci-chunk-min-length"), Some("123"));
    c.get(&format!("/v2/built/referrers/{}", sha256(b"x")))
        .await
        .expect(404, None);
    c.put_manifest("built", "big", OCI_MANIFEST, &vec![b' '; 2048])
        .await
        .expect(413, None);
    let image = c.push_image("built", "a", unique_seed()).await;
    c.put_manifest("built", "b", OCI_MANIFEST, &image.manifest)
        .await
        .expect(201, None);
    c.get("/v2/built/tags/list?n=2").await.expect(400, None);
    let page = c.get("/v2/built/tags/list").await;
    assert_eq!(page.json()["tags"].as_array().unwrap().len(), 1);
    assert!(page.header("link").is_none());
    assert!(
        c.get("/v2/built/manifests/a")
            .await
            .header("docker-content-digest")
            .is_none()
    );
    c.get("/healthz").await.expect(200, None);
    c.get("/readyz").await.expect(200, None);
}

crate::harness::trials! {
    blob_location_hook_redirects_to_a_cdn;
    upload_location_hook_sets_absolute_locations;
    options_set_through_the_builder;
}
