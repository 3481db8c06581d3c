//! Online garbage collection and immutable tags: `berth gc` and the background worker delete
//! only what nothing references, never a layer a push is about to reference; a stress run of
//! interleaved pushes, deletes, re-pushes of the same layers and collection passes ends with
//! every manifest whole and no orphans; `--dry-run` changes nothing; immutable tags hold.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::stress::{StressTally, every_manifest_is_whole, stress};
use crate::util::*;

/// Runs `berth gc` on the deployment's configuration, with `env` on top.
pub fn gc(deployment: &Deployment, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let mut all = vec!["gc"];
    all.extend_from_slice(args);
    outcome(deployment.command(&all).envs(env.iter().copied()))
}

const NO_GRACE: &[(&str, &str)] = &[("BERTH_GC_GRACE_PERIOD", "0s")];

/// Stored blob objects: files of the blob directory, or objects under the S3 prefix.
async fn stored_objects(deployment: &Deployment) -> usize {
    if deployment.backend.uses_s3() {
        let (objects, uploads) = s3_listing(deployment.s3_prefix.as_deref().unwrap()).await;
        assert!(uploads.is_empty(), "multipart uploads left: {uploads:?}");
        objects.len()
    } else {
        files_under(&deployment.data_dir().join("blobs")).len()
    }
}

/// Files of the blob directory, with the digest of their bytes.
fn stored_files(deployment: &Deployment) -> Vec<String> {
    files_under(&deployment.data_dir().join("blobs"))
        .into_iter()
        .filter_map(|path| {
            let data = std::fs::read(&path).ok()?;
            Some(format!("{} {}", path.display(), sha256(&data)))
        })
        .collect()
}

async fn status(c: &Client, method: Method, path: &str) -> u16 {
    c.call(method, path).await.status.as_u16()
}

async fn gc_deletes_only_what_nothing_references_after_the_grace_period() {
    let server = Server::start_with(&[("BERTH_GC_INTERVAL", "0")]);
    let c = server.client();
    let deployment = &server.deployment;
    let seed = unique_seed();
    let kept = c.push_image("gc/kept", "v1", seed).await;
    let doomed = c.push_image("gc/doomed", "v1", seed + 1).await;
    // Shared with the kept image: deleting the doomed image's copy must not touch it.
    let shared = c.push_blob("gc/doomed", &kept.layer).await;
    let orphan = random_bytes(3000, seed + 2);
    let orphan_digest = c.push_blob("gc/doomed", &orphan).await;
    c.call(
        Method::DELETE,
        &format!("/v2/gc/doomed/manifests/{}", doomed.digest),
    )
    .await
    .expect(202, None);
    let objects_before = stored_objects(deployment).await;
    assert!(objects_before >= 5, "{objects_before} objects");

    // Inside the grace period (24 h by default) nothing is due.
    let early = gc(deployment, &[], &[]);
    assert!(early.ok, "{}", early.out);
    assert!(
        early
            .out
            .contains("deleted 0 untagged manifest(s), 0 blob link(s) and 0 blob(s)"),
        "{}",
        early.out
    );

    let preview = gc(deployment, &["--dry-run"], NO_GRACE);
    assert!(preview.ok, "{}", preview.out);
    // Links: the doomed image's config and layer, the shared layer's copy, the orphan;
    // blobs: all but the shared layer, which the kept image references.
    assert!(
        preview
            .out
            .contains("would delete 4 blob link(s) and 3 blob(s)"),
        "{}",
        preview.out
    );
    assert!(
        preview.out.contains("nothing was changed"),
        "{}",
        preview.out
    );
    for (repo, digest) in [
        ("gc/doomed", &orphan_digest),
        ("gc/doomed", &shared),
        ("gc/doomed", &sha256(&doomed.layer)),
    ] {
        assert_eq!(
            status(&c, Method::HEAD, &format!("/v2/{repo}/blobs/{digest}")).await,
            200,
            "a dry run changes nothing"
        );
    }
    assert_eq!(stored_objects(deployment).await, objects_before);

    let run = gc(deployment, &[], NO_GRACE);
    assert!(run.ok, "{}", run.out);
    assert!(
        run.out
            .contains("deleted 0 untagged manifest(s), 4 blob link(s) and 3 blob(s)"),
        "{}",
        run.out
    );
    assert_eq!(
        stored_objects(deployment).await,
        2,
        "only the kept image's config and layer are stored"
    );
    for digest in [&orphan_digest, &shared, &sha256(&doomed.layer)] {
        assert_eq!(
            status(&c, Method::HEAD, &format!("/v2/gc/doomed/blobs/{digest}")).await,
            404
        );
    }
    // The kept image is whole, the shared layer included.
    for blob in [&kept.config, &kept.layer] {
        let got = c
            .get_following(&format!("/v2/gc/kept/blobs/{}", sha256(blob)))
            .await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body[..], blob[..]);
    }
    c.get("/v2/gc/kept/manifests/v1").await.expect(200, None);
    // A collected blob can be pushed again.
    c.push_blob("gc/doomed", &orphan).await;
    let again = gc(deployment, &["--dry-run"], NO_GRACE);
    assert!(
        again
            .out
            .contains("would delete 1 blob link(s) and 1 blob(s)"),
        "{}",
        again.out
    );
}

async fn untagged_manifests_go_when_configured_and_what_keeps_them_stays() {
    // The grace period and the age of untagged manifests are long enough for this test's
    // pushes (blobs, then manifests; children, then their index) to finish.
    let server = Server::start_with(&[
        ("BERTH_GC_GRACE_PERIOD", "2s"),
        ("BERTH_GC_UNTAGGED_AFTER", "3s"),
        ("BERTH_GC_INTERVAL", "200ms"),
    ]);
    let c = server.client();
    let seed = unique_seed();
    let repo = "gc/untagged";
    let tagged = c.push_image(repo, "v1", seed).await;
    // An image pushed by digest only, and an index (tagged) whose child is pushed by digest.
    let loose = c.push_image(repo, "tmp", seed + 1).await;
    c.call(Method::DELETE, &format!("/v2/{repo}/manifests/tmp"))
        .await
        .expect(202, None);
    let child = c.push_image(repo, "child", seed + 2).await;
    c.call(Method::DELETE, &format!("/v2/{repo}/manifests/child"))
        .await
        .expect(202, None);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{}}}]}}"#,
        child.digest,
        child.manifest.len()
    );
    c.put_manifest(repo, "multi", OCI_INDEX, index.as_bytes())
        .await
        .expect(201, None);
    // A signature-like referrer of the tagged image, and one of the loose image.
    let kept_referrer = push_referrer(&c, repo, &tagged, seed).await;
    let loose_referrer = push_referrer(&c, repo, &loose, seed + 1).await;

    let manifest = |d: String| format!("/v2/{repo}/manifests/{d}");
    eventually(
        "the loose image and its referrer to be collected",
        Duration::from_secs(60),
        async || {
            status(&c, Method::HEAD, &manifest(loose.digest.clone())).await == 404
                && status(&c, Method::HEAD, &manifest(loose_referrer.clone())).await == 404
                && status(
                    &c,
                    Method::HEAD,
                    &format!("/v2/{repo}/blobs/{}", sha256(&loose.layer)),
                )
                .await
                    == 404
        },
    )
    .await;
    for kept in [
        &tagged.digest,
        &child.digest,
        &kept_referrer,
        &sha256(index.as_bytes()),
    ] {
        assert_eq!(
            status(&c, Method::HEAD, &manifest(kept.clone())).await,
            200,
            "{kept} is kept by a tag, an index or its subject"
        );
    }
    for blob in [&tagged.layer, &child.layer] {
        assert_eq!(
            status(
                &c,
                Method::HEAD,
                &format!("/v2/{repo}/blobs/{}", sha256(blob))
            )
            .await,
            200
        );
    }
}

/// Pushes an artifact whose subject is `subject`; returns its digest.
async fn push_referrer(c: &Client, repo: &str, subject: &Image, seed: u64) -> String {
    let empty = b"{}".to_vec();
    let empty_digest = c.push_blob(repo, &empty).await;
    let body = image_manifest(
        &empty_digest,
        2,
        &[],
        Some(&format!(
            r#""subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{}}},"annotations":{{"seed":"{seed}"}}"#,
            subject.digest,
            subject.manifest.len()
        )),
    );
    let digest = sha256(&body);
    c.put_manifest(repo, &digest, OCI_MANIFEST, &body)
        .await
        .expect(201, None);
    digest
}

async fn immutable_tags_cannot_be_moved_or_deleted() {
    let server = Server::start_with(&[("BERTH_IMMUTABLE_TAGS", "release/**:v*, base:stable")]);
    let c = server.client();
    let seed = unique_seed();
    let first = c.push_image("release/app", "v1", seed).await;
    let second = c.push_image("release/app", "latest", seed + 1).await;

    let moved = c
        .put_manifest("release/app", "v1", OCI_MANIFEST, &second.manifest)
        .await;
    moved.expect(403, Some("DENIED"));
    let message = moved.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("v1") && message.contains("immutable") && message.contains(&first.digest),
        "{message}"
    );
    // The same manifest again is no move.
    c.put_manifest("release/app", "v1", OCI_MANIFEST, &first.manifest)
        .await
        .expect(201, None);
    c.call(Method::DELETE, "/v2/release/app/manifests/v1")
        .await
        .expect(403, Some("DENIED"));
    c.call(
        Method::DELETE,
        &format!("/v2/release/app/manifests/{}", first.digest),
    )
    .await
    .expect(403, Some("DENIED"));
    let got = c.get("/v2/release/app/manifests/v1").await;
    got.expect(200, None);
    assert_eq!(got.body[..], first.manifest[..]);

    // Tags outside the patterns move and go as always.
    c.put_manifest("release/app", "latest", OCI_MANIFEST, &first.manifest)
        .await
        .expect(201, None);
    c.call(Method::DELETE, "/v2/release/app/manifests/latest")
        .await
        .expect(202, None);
    c.push_image("dev/app", "v1", seed + 2).await;
    let other = c.push_image("dev/app", "v2", seed + 3).await;
    c.put_manifest("dev/app", "v1", OCI_MANIFEST, &other.manifest)
        .await
        .expect(201, None);
    c.call(Method::DELETE, "/v2/dev/app/manifests/v1")
        .await
        .expect(202, None);

    // Racing first pushes of one immutable tag: exactly one wins, and the tag names it.
    let names: Vec<String> = (0..6).map(|i| format!("seed-{i}")).collect();
    let images: Vec<Image> = futures::future::join_all(
        names
            .iter()
            .zip(0u64..)
            .map(|(name, i)| c.push_image("base", name, seed + 10 + i)),
    )
    .await;
    let attempts = images.iter().map(|image| {
        let c = c.clone();
        let body = image.manifest.clone();
        async move { c.put_manifest("base", "stable", OCI_MANIFEST, &body).await }
    });
    let answers = futures::future::join_all(attempts).await;
    let winners: Vec<usize> = answers
        .iter()
        .enumerate()
        .filter(|(_, a)| a.status == StatusCode::CREATED)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(winners.len(), 1, "one first push wins: {answers:?}");
    for (i, a) in answers.iter().enumerate() {
        if i != winners[0] {
            a.expect(403, Some("DENIED"));
        }
    }
    let stable = c.get("/v2/base/manifests/stable").await;
    assert_eq!(stable.body[..], images[winners[0]].manifest[..]);
}

fn iterations() -> u64 {
    std::env::var("BERTH_GC_STRESS_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250)
}

async fn stress_pushes_deletes_and_collection_never_lose_a_layer() {
    let server = Server::start_with(&[
        ("BERTH_GC_GRACE_PERIOD", "0s"),
        ("BERTH_GC_INTERVAL", "100ms"),
        ("BERTH_REDIRECT", "false"),
    ]);
    let deployment = Arc::clone(&server.deployment);
    // Alongside the server's own worker, `berth gc` processes collect the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let passes = Arc::new(AtomicU64::new(0));
    let collector = deployment.backend.persistent().then(|| {
        let (deployment, stop, passes) = (
            Arc::clone(&deployment),
            Arc::clone(&stop),
            Arc::clone(&passes),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let run = gc(&deployment, &[], NO_GRACE);
                assert!(run.ok, "a collection pass failed: {}", run.out);
                passes.fetch_add(1, Ordering::Relaxed);
            }
        })
    });
    let tally = Arc::new(StressTally::default());
    let clients = (0..8).map(|_| server.client()).collect();
    let pushed = stress(clients, iterations(), unique_seed(), Arc::clone(&tally)).await;
    stop.store(true, Ordering::Relaxed);
    if let Some(collector) = collector {
        collector.join().expect("the collector ran");
    }
    eprintln!(
        "stress: {} pushes, {} deletes, {} mounts, {} manifests refused and pushed again, \
         {} answers 503, {} `berth gc` passes beside the worker",
        tally.pushes.load(Ordering::Relaxed),
        tally.deletes.load(Ordering::Relaxed),
        tally.mounts.load(Ordering::Relaxed),
        tally.refused_then_repushed.load(Ordering::Relaxed),
        tally.unavailable.load(Ordering::Relaxed),
        passes.load(Ordering::Relaxed)
    );
    assert!(tally.pushes.load(Ordering::Relaxed) > 0);

    let c = server.client();
    // One more pass after the last change, then nothing unreferenced may be left.
    let settle = async || {
        if deployment.backend.persistent() {
            let run = gc(&deployment, &[], NO_GRACE);
            assert!(run.ok, "{}", run.out);
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    settle().await;
    let (manifests, referenced) = every_manifest_is_whole(&c, &pushed).await;
    eprintln!(
        "stress: {manifests} manifests left, all whole, referencing {} blobs",
        referenced.len()
    );
    if deployment.backend.persistent() {
        let preview = gc(&deployment, &["--dry-run"], NO_GRACE);
        assert!(
            preview
                .out
                .contains("would delete 0 blob link(s) and 0 blob(s)"),
            "{}",
            preview.out
        );
        // The replica's own worker may still be removing the bytes of rows it deleted last.
        let settled = tokio::time::timeout(Duration::from_secs(20), async {
            while stored_objects(&deployment).await != referenced.len() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        assert!(
            settled.is_ok(),
            "every stored object is a blob a manifest references: {} stored, {} referenced; \
             files: {:?}",
            stored_objects(&deployment).await,
            referenced.len(),
            stored_files(&deployment)
        );
        let scrub = deployment.command(&["scrub"]).output().unwrap();
        let out = String::from_utf8_lossy(&scrub.stdout);
        assert!(scrub.status.success(), "{out}");
        assert!(out.contains("no problems found"), "{out}");
    }
}

/// The set-up of the races made certain on Postgres: a server without a worker of its own,
/// `tags` of `repo` set (on another image) so that a test can hold a push at each of them, and
/// an image manifest whose config and layer are pushed but which is not.
struct Race {
    server: Server,
    c: Client,
    blobs: Vec<(String, Vec<u8>)>,
    manifest: Vec<u8>,
}

impl Race {
    async fn set_up(repo: &str, tags: &[&str]) -> Race {
        let server = Server::start_with(&[("BERTH_GC_INTERVAL", "0"), ("BERTH_REDIRECT", "false")]);
        let c = server.client();
        let seed = unique_seed();
        for tag in tags {
            c.push_image(repo, tag, seed).await;
        }
        let config =
            format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
        let layer = random_bytes(5000, seed + 1);
        let config_digest = c.push_blob(repo, &config).await;
        let layer_digest = c.push_blob(repo, &layer).await;
        let manifest = image_manifest(
            &config_digest,
            config.len(),
            &[(&layer_digest, layer.len())],
            None,
        );
        Race {
            server,
            c,
            blobs: vec![(config_digest, config), (layer_digest, layer)],
            manifest,
        }
    }

    /// A transaction that holds `tag`'s row until it commits: a push of that tag waits.
    async fn hold_tag(&self, tag: &str) -> sqlx::postgres::PgConnection {
        use sqlx::Connection as _;
        let url = self.server.deployment.database_url().unwrap();
        let mut holder = sqlx::postgres::PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "BEGIN; SELECT 1 FROM tags WHERE name = '{tag}' FOR UPDATE"
        )))
        .execute(&mut holder)
        .await
        .unwrap();
        holder
    }

    fn put(&self, repo: &'static str, tag: &'static str) -> tokio::task::JoinHandle<Answer> {
        let (c, manifest) = (self.c.clone(), self.manifest.clone());
        tokio::spawn(async move { c.put_manifest(repo, tag, OCI_MANIFEST, &manifest).await })
    }
}

async fn commit(holder: &mut sqlx::postgres::PgConnection) {
    sqlx::raw_sql("COMMIT").execute(holder).await.unwrap();
}

/// The race the locks exist for, made certain: a manifest push is held inside its
/// transaction (after it checked and recorded its layers' links, before it commits) while a
/// collection pass judges those links, unreferenced until then. The pass must wait for the
/// push and keep the layers; without the locks it deletes them under the manifest.
async fn a_manifest_committing_while_gc_judges_its_layers_keeps_them() {
    let repo = "gc/race";
    let race = Race::set_up(repo, &["v1"]).await;
    let c = &race.c;
    let mut holder = race.hold_tag("v1").await;
    let push = race.put(repo, "v1");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!push.is_finished(), "the push waits at its tag");
    let pass = {
        let deployment = Arc::clone(&race.server.deployment);
        std::thread::spawn(move || gc(&deployment, &[], NO_GRACE))
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    commit(&mut holder).await;
    push.await.unwrap().expect(201, None);
    let pass = pass.join().unwrap();
    assert!(pass.ok, "{}", pass.out);
    for (digest, data) in &race.blobs {
        let got = c.get(&format!("/v2/{repo}/blobs/{digest}")).await;
        assert_eq!(
            got.status,
            StatusCode::OK,
            "{digest} was collected under the manifest: {}",
            pass.out
        );
        assert_eq!(got.body[..], data[..]);
    }
}

/// Two pushes of one manifest: the second waits for the first's row, finds it, and goes on to
/// its own tag; a client deletes the manifest in that moment. The second push must hold the
/// row it reuses (the delete waits for it), not answer 500 when its tag finds the manifest
/// gone. The collector deleting a blob or an untagged manifest races the same way.
async fn a_push_reusing_a_manifest_row_holds_it_against_a_racing_delete() {
    let repo = "gc/reuse";
    let race = Race::set_up(repo, &["first", "second"]).await;
    let c = &race.c;
    let digest = sha256(&race.manifest);
    let mut first_held = race.hold_tag("first").await;
    let mut second_held = race.hold_tag("second").await;
    // The first push inserts the manifest and waits at its tag; the second waits for that
    // insert.
    let first = race.put(repo, "first");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = race.put(repo, "second");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!first.is_finished() && !second.is_finished());
    // The first commits; the second finds its row and waits at its own tag.
    commit(&mut first_held).await;
    first.await.unwrap().expect(201, None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "the second push waits at its tag");
    let delete = {
        let c = c.clone();
        let path = format!("/v2/{repo}/manifests/{digest}");
        tokio::spawn(async move { c.send(c.request(Method::DELETE, &path)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !delete.is_finished(),
        "the delete waits for the push that holds the manifest"
    );
    commit(&mut second_held).await;
    second.await.unwrap().expect(201, None);
    delete.await.unwrap().expect(202, None);
    // The delete came last: the manifest and both its tags are gone, nothing dangles.
    for reference in ["first", "second", digest.as_str()] {
        let got = c.get(&format!("/v2/{repo}/manifests/{reference}")).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{reference}");
    }
}

crate::harness::trials! {
    gc_deletes_only_what_nothing_references_after_the_grace_period.needs(Persistence);
    untagged_manifests_go_when_configured_and_what_keeps_them_stays;
    immutable_tags_cannot_be_moved_or_deleted;
    stress_pushes_deletes_and_collection_never_lose_a_layer.multi_thread(4);
    a_manifest_committing_while_gc_judges_its_layers_keeps_them.multi_thread(2).needs(Postgres);
    a_push_reusing_a_manifest_row_holds_it_against_a_racing_delete.multi_thread(2).needs(Postgres);
}
