//! Bytes that rot: `berth scrub` finds blobs whose stored bytes are damaged or gone and
//! references that do not resolve, and with `--repair` forgets damaged blobs so that they are
//! pushed again; pulls of damaged blobs fail cleanly.

use reqwest::Method;

use crate::util::*;

fn scrub(server: &Server, args: &[&str]) -> Outcome {
    let mut all = vec!["scrub"];
    all.extend_from_slice(args);
    outcome(&mut server.deployment.command(&all))
}

/// Replaces the stored object holding exactly `content` with `replacement`.
async fn tamper(server: &Server, content: &[u8], replacement: &[u8]) {
    let deployment = &server.deployment;
    if deployment.backend.uses_s3() {
        let client = s3_client().await;
        let (objects, _) = s3_listing(deployment.s3_prefix.as_deref().unwrap()).await;
        for key in objects {
            let got = client
                .get_object()
                .bucket(s3_bucket())
                .key(&key)
                .send()
                .await
                .unwrap();
            let bytes = got.body.collect().await.unwrap().into_bytes();
            if bytes[..] == content[..] {
                client
                    .put_object()
                    .bucket(s3_bucket())
                    .key(&key)
                    .body(replacement.to_vec().into())
                    .send()
                    .await
                    .unwrap();
                return;
            }
        }
    } else {
        for path in files_under(&deployment.data_dir().join("blobs")) {
            if std::fs::read(&path).is_ok_and(|b| b[..] == content[..]) {
                std::fs::write(&path, replacement).unwrap();
                return;
            }
        }
    }
    panic!("no stored object holds the content to tamper with");
}

async fn scrub_finds_rotten_and_missing_bytes_and_repair_makes_clients_push_again() {
    let server = Server::start_with(&[("BERTH_REDIRECT", "false")]);
    let c = server.client();
    let image = c.push_image("rot/app", "v1", unique_seed()).await;
    let other = c.push_image("rot/other", "v1", unique_seed()).await;
    let clean = scrub(&server, &[]);
    assert!(clean.ok, "{}", clean.out);
    assert!(clean.out.contains("no problems found"), "{}", clean.out);
    assert!(clean.out.contains("checked 4 blobs"), "{}", clean.out);

    // A bit flips in one layer; another loses its tail.
    let layer = sha256(&image.layer);
    let mut flipped = image.layer.clone();
    flipped[100] ^= 0x40;
    tamper(&server, &image.layer, &flipped).await;
    let config = sha256(&other.config);
    tamper(
        &server,
        &other.config,
        &other.config[..other.config.len() / 2],
    )
    .await;

    // Pulls fail cleanly: the short blob before its body is sent, the flipped one when the
    // client checks its digest.
    let short = c.get(&format!("/v2/rot/other/blobs/{config}")).await;
    short.expect(500, Some("UNKNOWN"));
    let message = short.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("damaged") && message.contains("berth scrub"),
        "{message}"
    );
    let bad = c.get(&format!("/v2/rot/app/blobs/{layer}")).await;
    assert_ne!(
        sha256(&bad.body),
        layer,
        "the flipped bit is served, for clients to catch"
    );

    // Scrub finds both, and exits non-zero.
    let found = scrub(&server, &[]);
    assert!(!found.ok, "{}", found.out);
    assert!(
        found.out.contains(&format!("blob {layer}")) && found.out.contains("corrupt"),
        "{}",
        found.out
    );
    assert!(
        found.out.contains(&format!("blob {config}")) && found.out.contains("damaged"),
        "{}",
        found.out
    );
    assert!(
        found.out.contains("--repair"),
        "it says how to repair: {}",
        found.out
    );
    // One repository at a time.
    let one = scrub(&server, &["--repository", "rot/other"]);
    assert!(
        one.out.contains("checked 2 blobs") && !one.out.contains(&layer),
        "{}",
        one.out
    );
    let sampled = scrub(&server, &["--sample", "100"]);
    assert!(sampled.out.contains("checked 4 blobs"), "{}", sampled.out);

    // Repair forgets them: 404 until pushed again, and the manifests' references dangle.
    let repaired = scrub(&server, &["--repair"]);
    assert!(!repaired.ok);
    assert!(repaired.out.contains("forgotten"), "{}", repaired.out);
    c.get(&format!("/v2/rot/app/blobs/{layer}"))
        .await
        .expect(404, Some("BLOB_UNKNOWN"));
    let dangling = scrub(&server, &[]);
    assert!(!dangling.ok);
    assert!(
        dangling
            .out
            .contains("references a blob that is not in the registry"),
        "{}",
        dangling.out
    );
    c.push_blob("rot/app", &image.layer).await;
    c.push_blob("rot/other", &other.config).await;
    let got = c.get(&format!("/v2/rot/app/blobs/{layer}")).await;
    assert_eq!(sha256(&got.body), layer, "the pushed bytes are served");
    let healed = scrub(&server, &[]);
    assert!(healed.ok, "{}", healed.out);

    // A blob unlinked through the API while a manifest uses it.
    c.call(Method::DELETE, &format!("/v2/rot/app/blobs/{layer}"))
        .await
        .expect(202, None);
    let unlinked = scrub(&server, &["--repository", "rot/app"]);
    assert!(!unlinked.ok);
    assert!(
        unlinked.out.contains("not linked to its repository"),
        "{}",
        unlinked.out
    );
}

fn scrub_refuses_what_it_cannot_do() {
    let deployment = Deployment::new(&[]);
    let run = |args: &[&str]| {
        let out = deployment.command(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    if Backend::current().persistent() {
        for sample in ["--sample=0", "--sample=150", "--sample=-1"] {
            let said = run(&["scrub", sample]);
            assert!(said.contains("--sample is a percentage"), "{said}");
        }
        assert!(run(&["scrub", "--repository", "Not/Valid"]).contains("invalid"));
    } else {
        assert!(run(&["scrub"]).contains("nothing to scrub"));
    }
}

crate::harness::trials! {
    scrub_finds_rotten_and_missing_bytes_and_repair_makes_clients_push_again.needs(Persistence);
    scrub_refuses_what_it_cannot_do;
}
