//! Workflows: what a client does, as scripts with their retries. Each has a setup (run without
//! faults) and a part run with faults; both build the same images from the same seeds.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use berth::RegistryOptions;

use crate::client::{Client, Content, Manifest};

type Script = fn(Arc<Client>) -> BoxFuture<'static, ()>;

/// A workflow.
pub struct Workflow {
    pub name: &'static str,
    /// Changes to the world's registry options.
    pub options: fn(&mut RegistryOptions),
    /// Run first, without faults.
    pub setup: Script,
    /// Run with faults.
    pub run: Script,
}

fn same(_: &mut RegistryOptions) {}

fn nothing(_: Arc<Client>) -> BoxFuture<'static, ()> {
    Box::pin(async {})
}

const KIB: usize = 1024;

/// An image of a small config and one layer of five part sizes (and a bit).
fn image(seed: u64) -> Manifest {
    Manifest::image(seed, &[5 * 64 * KIB + 123], None)
}

/// An image whose two layers fit one piece each.
fn small_image(seed: u64) -> Manifest {
    Manifest::image(seed, &[3 * KIB, 17 * KIB], None)
}

macro_rules! script {
    (|$c:ident| $body:block) => {
        |$c: Arc<Client>| -> BoxFuture<'static, ()> { Box::pin(async move $body) }
    };
}

/// The workflow called `name`.
pub fn named(name: &str) -> Workflow {
    all()
        .into_iter()
        .find(|w| w.name == name)
        .unwrap_or_else(|| panic!("no workflow {name}"))
}

pub fn all() -> Vec<Workflow> {
    vec![
        Workflow {
            name: "monolithic_push",
            options: same,
            setup: nothing,
            run: script!(|c| {
                c.push_image("mono/app", "v1", &image(1)).await;
            }),
        },
        Workflow {
            name: "chunked_push",
            options: same,
            setup: nothing,
            run: script!(|c| {
                let img = image(2);
                c.push_monolithic("chunked/app", &img.blobs[0]).await;
                // Chunks that are not a whole number of pieces: partial pieces, carried
                // block heads under direct I/O.
                c.push_chunked("chunked/app", &img.blobs[1], 100 * KIB + 7, false)
                    .await;
                c.push_manifest("chunked/app", "v1", &img).await;
            }),
        },
        Workflow {
            name: "chunked_resume",
            options: same,
            setup: nothing,
            run: script!(|c| {
                let img = image(3);
                c.push_monolithic("resume/app", &img.blobs[0]).await;
                c.push_chunked("resume/app", &img.blobs[1], 150 * KIB, true)
                    .await;
                c.push_manifest("resume/app", "v1", &img).await;
            }),
        },
        Workflow {
            name: "mount_from",
            options: same,
            setup: script!(|c| {
                c.push_image("mount/src", "v1", &small_image(4)).await;
            }),
            run: script!(|c| {
                let img = small_image(4);
                for blob in &img.blobs {
                    c.mount("mount/dst", blob, Some("mount/src")).await;
                }
                c.push_manifest("mount/dst", "v1", &img).await;
            }),
        },
        Workflow {
            name: "mount_anywhere",
            options: same,
            setup: script!(|c| {
                c.push_image("anywhere/src", "v1", &small_image(5)).await;
            }),
            run: script!(|c| {
                let img = small_image(5);
                for blob in &img.blobs {
                    c.mount("anywhere/dst", blob, None).await;
                }
                c.push_manifest("anywhere/dst", "v1", &img).await;
            }),
        },
        Workflow {
            name: "index_push",
            options: same,
            setup: nothing,
            run: script!(|c| {
                let index = Manifest::index(vec![small_image(6), small_image(7)]);
                c.push_image("multi/app", "v1", &index).await;
            }),
        },
        Workflow {
            name: "referrer_push",
            options: same,
            setup: script!(|c| {
                c.push_image("refer/app", "v1", &small_image(8)).await;
            }),
            run: script!(|c| {
                let subject = small_image(8);
                let signature = Manifest::image(9, &[2 * KIB], Some(&subject));
                c.push_image("refer/app", signature.digest().as_str(), &signature)
                    .await;
            }),
        },
        Workflow {
            name: "tag_move",
            options: same,
            setup: script!(|c| {
                c.push_image("tags/app", "latest", &small_image(10)).await;
                c.push_image("tags/app", "v2", &small_image(11)).await;
            }),
            run: script!(|c| {
                c.push_manifest("tags/app", "latest", &small_image(11))
                    .await;
                c.delete_tag("tags/app", "v2").await;
            }),
        },
        Workflow {
            name: "manifest_delete",
            options: same,
            setup: script!(|c| {
                c.push_image("delete/app", "v1", &image(12)).await;
                c.push_image("delete/app", "v2", &small_image(13)).await;
            }),
            run: script!(|c| {
                c.delete_manifest("delete/app", image(12).digest()).await;
                c.collect_garbage().await;
            }),
        },
        Workflow {
            name: "blob_delete",
            options: same,
            setup: script!(|c| {
                // The layer is unlinked while the manifest keeps it, and the collector looks
                // at it then (and keeps it).
                let img = small_image(14);
                c.push_image("unlink/app", "v1", &img).await;
                c.delete_blob("unlink/app", &img.blobs[1]).await;
                c.collect_garbage().await;
            }),
            run: script!(|c| {
                // Deleting the manifest must let the collector take the layer.
                c.delete_manifest("unlink/app", small_image(14).digest())
                    .await;
                c.collect_garbage().await;
            }),
        },
        Workflow {
            name: "gc_pass",
            options: same,
            setup: script!(|c| {
                c.push_image("gc/kept", "v1", &small_image(15)).await;
                let gone = small_image(16);
                c.push_image("gc/gone", "v1", &gone).await;
                c.delete_manifest("gc/gone", gone.digest()).await;
                c.push_monolithic("gc/orphan", &Content::random(40 * KIB, 17))
                    .await;
            }),
            run: script!(|c| {
                c.collect_garbage().await;
            }),
        },
        Workflow {
            name: "gc_untagged",
            options: |o| o.gc_untagged_after = Some(Duration::ZERO),
            setup: script!(|c| {
                c.push_image("untagged/app", "v1", &small_image(18)).await;
                let loose = small_image(19);
                c.push_image("untagged/app", loose.digest().as_str(), &loose)
                    .await;
            }),
            run: script!(|c| {
                c.collect_garbage().await;
                // The collector deleted the untagged manifest: it is not the client's to pull.
                let loose = small_image(19);
                if let Some(entry) = c
                    .ledger()
                    .manifests
                    .get_mut(&("untagged/app".to_owned(), loose.digest().clone()))
                {
                    entry.1 = true;
                }
            }),
        },
        Workflow {
            name: "maintenance",
            options: |o| o.upload_ttl = Duration::ZERO,
            setup: script!(|c| {
                let img = small_image(20);
                c.push_image("upkeep/app", "v1", &img).await;
                c.delete_manifest("upkeep/app", img.digest()).await;
                // Rows deleted, bytes left in the garbage queue for maintenance.
                let registry = c.world.registry().await;
                let now = c.world.now();
                registry
                    .metadata_store()
                    .collect_links(now, 500, now)
                    .await
                    .expect("links collected");
                c.abandoned_upload("upkeep/app", &Content::random(100 * KIB, 21))
                    .await;
                c.cancelled_upload("upkeep/app", &Content::random(30 * KIB, 22))
                    .await;
            }),
            run: script!(|c| {
                c.maintenance().await;
            }),
        },
        Workflow {
            name: "scrub_repair",
            options: same,
            setup: script!(|c| {
                let img = small_image(23);
                c.push_image("scrub/app", "v1", &img).await;
                lose_bytes(&c, "scrub/app", &img.blobs[1]).await;
            }),
            run: script!(|c| {
                c.scrub_repair().await;
                // The client pushes what was lost again.
                c.push_image("scrub/app", "v1", &small_image(23)).await;
            }),
        },
        Workflow {
            name: "heal_push",
            options: same,
            setup: script!(|c| {
                let img = small_image(24);
                c.push_image("heal/app", "v1", &img).await;
                lose_bytes(&c, "heal/app", &img.blobs[1]).await;
            }),
            run: script!(|c| {
                // A push of a blob whose row names lost bytes heals it.
                c.push_image("heal/app", "v1", &small_image(24)).await;
            }),
        },
        Workflow {
            name: "big_blob_push",
            options: same,
            setup: nothing,
            run: script!(|c| {
                // More than two parts (on S3, a multipart upload completed by the last
                // request), in chunks of 60 % of a part.
                let part = c.world.part_size();
                let img = Manifest::image(26, &[2 * part + 5], None);
                c.push_monolithic("big/app", &img.blobs[0]).await;
                c.push_chunked("big/app", &img.blobs[1], part * 3 / 5, false)
                    .await;
                c.push_manifest("big/app", "v1", &img).await;
            }),
        },
        Workflow {
            name: "cancel_upload",
            options: same,
            setup: nothing,
            run: script!(|c| {
                c.cancelled_upload("cancel/app", &Content::random(200 * KIB, 25))
                    .await;
            }),
        },
    ]
}

/// Removes a blob's stored bytes behind the registry's back (a disk that lost them).
async fn lose_bytes(c: &Client, repo: &str, blob: &Content) {
    let registry = c.world.registry().await;
    let repository = berth::oci::RepositoryName::parse(repo).expect("a valid name");
    let stored = registry
        .blob(&repository, &blob.digest)
        .await
        .expect("the blob is there");
    registry
        .blob_store()
        .delete(&stored.storage_key)
        .await
        .expect("its bytes are removed");
}
