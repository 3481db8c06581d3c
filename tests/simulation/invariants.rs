//! The invariants every case ends with, checked on the stores without faults after the
//! collector ran to quiescence (no grace period):
//!
//! - **I1** every manifest answered 201 and not deleted pulls whole: its bytes, and each of its
//!   blobs' bytes (but those the client unlinked itself), matching their digests;
//! - **I2** every blob row and link names bytes that exist and match;
//! - **I3** once every manifest is deleted and the collector (and upload expiry) ran to
//!   quiescence, no blob row, link, session, staged row, part, garbage entry, review, stored
//!   object or file remains;
//! - **I4** (checked by the client as it goes) a transient fault answers 503 with
//!   `Retry-After`, or an error the client resumes from; never 500.

use std::time::Duration;

use futures::StreamExt;

use berth::Registry;
use berth::metadata::{Census, DanglingKind, Page};
use berth::oci::{Digest, DigestAlgorithm, Reference, RepositoryName};

use crate::client::{Client, Manifest};
use crate::world::World;

fn name(repo: &str) -> RepositoryName {
    RepositoryName::parse(repo).expect("a valid repository name")
}

async fn read_all(registry: &Registry, key: &str) -> Result<Vec<u8>, String> {
    let mut stream = registry
        .blob_store()
        .read(key, None)
        .await
        .map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
    }
    Ok(bytes)
}

/// Runs the collector, maintenance included, until a pass finds nothing left to do.
async fn collect_to_quiescence(registry: &Registry, problems: &mut Vec<String>) {
    for _ in 0..20 {
        match registry.collect_garbage(None).await {
            Ok(report) => {
                let census = registry.metadata_store().census().await.unwrap_or_default();
                let idle = report.manifests + report.links + report.blobs == 0
                    && report.removed_objects == 0
                    && report.failed_objects == 0
                    && report.expired_uploads == 0;
                if idle && census.link_reviews + census.blob_reviews + census.garbage == 0 {
                    return;
                }
            }
            Err(e) => {
                problems.push(format!("garbage collection without faults failed: {e}"));
                return;
            }
        }
    }
    problems.push("garbage collection did not come to rest in 20 passes".to_owned());
}

/// I1 for one manifest (and its children).
async fn check_manifest(
    registry: &Registry,
    client: &Client,
    repo: &str,
    manifest: &Manifest,
    problems: &mut Vec<String>,
) {
    let digest = manifest.digest();
    match registry
        .manifest(&name(repo), &Reference::Digest(digest.clone()))
        .await
    {
        Ok(found) if found.content == manifest.content.bytes => {}
        Ok(_) => problems.push(format!("I1: manifest {repo}@{digest} has other bytes")),
        Err(e) => {
            problems.push(format!("I1: manifest {repo}@{digest} does not pull: {e}"));
            return;
        }
    }
    for blob in &manifest.blobs {
        let unlinked = client
            .ledger()
            .unlinked
            .contains(&(repo.to_owned(), blob.digest.clone()));
        if unlinked {
            continue;
        }
        let found = match registry.blob(&name(repo), &blob.digest).await {
            Ok(found) => found,
            Err(e) => {
                problems.push(format!(
                    "I1: blob {} of manifest {repo}@{digest} does not pull: {e}",
                    blob.digest
                ));
                continue;
            }
        };
        let mut bytes = Vec::new();
        let pulled = match registry.read_blob(&found, None).await {
            Ok(mut stream) => loop {
                match stream.next().await {
                    Some(Ok(chunk)) => bytes.extend_from_slice(&chunk),
                    Some(Err(e)) => break Err(e.to_string()),
                    None => break Ok(()),
                }
            },
            Err(e) => Err(e.to_string()),
        };
        match pulled {
            Ok(()) if bytes == blob.bytes => {}
            Ok(()) => problems.push(format!(
                "I1: blob {} of manifest {repo}@{digest} pulls {} other bytes",
                blob.digest,
                bytes.len()
            )),
            Err(e) => problems.push(format!(
                "I1: blob {} of manifest {repo}@{digest} does not pull whole: {e}",
                blob.digest
            )),
        }
    }
    for child in &manifest.children {
        Box::pin(check_manifest(registry, client, repo, child, problems)).await;
    }
}

/// I2: blob rows name bytes that exist and match; links name blob rows; references resolve
/// (but links the client removed itself).
async fn check_rows(registry: &Registry, client: &Client, problems: &mut Vec<String>) {
    let metadata = registry.metadata_store();
    let mut after: Option<Digest> = None;
    let mut rows = 0u64;
    loop {
        let page = match metadata.list_blobs(None, after.as_ref(), 100).await {
            Ok(page) => page,
            Err(e) => return problems.push(format!("I2: listing blobs failed: {e}")),
        };
        let Some(last) = page.last() else { break };
        after = Some(last.digest.clone());
        for blob in page {
            rows += 1;
            match read_all(registry, &blob.storage_key).await {
                Ok(bytes) => {
                    let algorithm = blob.digest.algorithm().unwrap_or(DigestAlgorithm::Sha256);
                    if bytes.len() as u64 != blob.size || algorithm.digest(&bytes) != blob.digest {
                        problems.push(format!(
                            "I2: blob {} (key {}) holds {} bytes that do not match",
                            blob.digest,
                            blob.storage_key,
                            bytes.len()
                        ));
                    }
                }
                Err(e) => problems.push(format!(
                    "I2: blob {} names bytes that are gone (key {}): {e}",
                    blob.digest, blob.storage_key
                )),
            }
        }
    }
    let census = metadata.census().await.unwrap_or_default();
    if census.blobs != rows {
        problems.push(format!(
            "I2: {} blob rows counted, {rows} listed",
            census.blobs
        ));
    }
    let repositories = metadata
        .repositories(Page::default())
        .await
        .unwrap_or_default();
    let mut linked = 0;
    for repo in &repositories {
        linked += metadata
            .list_blobs(Some(&name(repo)), None, u32::MAX)
            .await
            .map(|b| b.len() as u64)
            .unwrap_or(0);
    }
    if linked != census.links {
        problems.push(format!(
            "I2: {} links, of which {linked} name a blob row",
            census.links
        ));
    }
    match metadata.dangling_references(None, 1000).await {
        Ok(dangling) => {
            for d in dangling {
                let unlinked_by_client = d.kind == DanglingKind::UnlinkedBlob
                    && client
                        .ledger()
                        .unlinked
                        .contains(&(d.repository.as_str().to_owned(), d.target.clone()));
                if !unlinked_by_client {
                    problems.push(format!(
                        "I2: manifest {}@{} references {} ({:?})",
                        d.repository, d.manifest, d.target, d.kind
                    ));
                }
            }
        }
        Err(e) => problems.push(format!("I2: dangling references unreadable: {e}")),
    }
}

/// Checks I1–I3 (the client checked I4) and returns what failed.
pub async fn check(world: &World, client: &Client) -> Vec<String> {
    world.faults.disarm();
    world.shut_down();
    let mut problems = client
        .complaints
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|c| format!("I4: {c}"))
        .collect::<Vec<_>>();

    let registry = world.plain_registry(world.options().clone()).await;
    if crate::debug() {
        eprintln!(
            "before collection: {:?}",
            registry.metadata_store().census().await
        );
    }
    collect_to_quiescence(&registry, &mut problems).await;
    if crate::debug() {
        eprintln!(
            "after collection: {:?}",
            registry.metadata_store().census().await
        );
    }
    let live: Vec<(String, Manifest)> = client.live_manifests();
    for (repo, manifest) in &live {
        check_manifest(&registry, client, repo, manifest, &mut problems).await;
    }
    check_rows(&registry, client, &mut problems).await;

    // I3: everything deleted, everything collected, nothing left.
    let attempted: Vec<(String, Digest)> = client.ledger().attempted.iter().cloned().collect();
    for (repo, digest) in attempted {
        if let Err(e) = registry
            .delete_manifest(&name(&repo), &Reference::Digest(digest.clone()))
            .await
            && berth::http::ApiError::from(e.clone()).status().as_u16() != 404
        {
            problems.push(format!("I3: deleting {repo}@{digest} failed: {e}"));
        }
    }
    drop(registry);
    let mut sweeping = world.options().clone();
    sweeping.upload_ttl = Duration::ZERO;
    let registry = world.plain_registry(sweeping).await;
    collect_to_quiescence(&registry, &mut problems).await;
    match registry.metadata_store().census().await {
        Ok(census) => {
            let left = Census {
                repositories: 0,
                ..census
            };
            if left != Census::default() {
                problems.push(format!(
                    "I3: rows left after everything was deleted: {left:?}"
                ));
            }
        }
        Err(e) => problems.push(format!("I3: census failed: {e}")),
    }
    match registry.blob_store().stored_keys().await {
        Ok(keys) if keys.is_empty() => {}
        Ok(keys) => problems.push(format!(
            "I3: stored objects left after everything was deleted: {keys:?}"
        )),
        Err(e) => problems.push(format!("I3: listing the blob store failed: {e}")),
    }
    problems
}
