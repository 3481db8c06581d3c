//! Pulls of mirrored names: what a pull is answered with, whichever way it was found. Names
//! that map to an upstream ([`crate::upstream::Upstreams::route`]) are served from what is
//! kept here, and what is not kept yet is fetched, stored and served at once (`through.rs`,
//! feature `mirror`); every other name, and every name in a build without the feature, is
//! read from the stores alone.

use super::Registry;
use crate::error::RegistryResult;
use crate::metadata::{BlobRecord, ManifestRecord, Page};
use crate::oci::{Digest, Reference, RepositoryName};
use crate::storage::ByteStream;

#[cfg(feature = "mirror")]
mod follow;
#[cfg(feature = "mirror")]
mod through;
#[cfg(feature = "mirror")]
pub use through::{Mirror, RELAY_OWNER_HEADER, RELAY_PATH};

/// A manifest served for a pull, and whether it may be out of date.
#[derive(Debug)]
pub struct PulledManifest {
    /// The manifest.
    pub record: ManifestRecord,
    /// Set when the manifest was served from what is kept because its upstream could not be
    /// asked: why.
    pub stale: Option<String>,
}

/// Where a pulled blob's bytes come from.
pub enum PulledBlob {
    /// Storage (kept, or stored by a fetch that finished).
    Stored(BlobRecord),
    /// A fetch this request started: the bytes as they arrive from the upstream, `size` as
    /// the upstream announced it.
    Fetching {
        /// The blob's size, when the upstream said.
        size: Option<u64>,
        /// The bytes; the stream fails rather than end if the fetch fails.
        body: ByteStream,
    },
    /// Not kept, and the upstream has it with this size (a `HEAD` is answered without
    /// fetching).
    Upstream {
        /// The blob's size.
        size: u64,
    },
}

/// Whether a blob pull wants the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobRead {
    /// `HEAD`: the size will do.
    Head,
    /// `GET`.
    Get,
}

impl Registry {
    /// The upstream `name` maps to, if this registry mirrors any (`ns` is containerd's
    /// parameter naming the registry the client meant): its name, and whether pushes into
    /// the name are accepted.
    pub fn mirrored(&self, name: &str, ns: Option<&str>) -> Option<(String, bool)> {
        #[cfg(feature = "mirror")]
        if let Some((_, mirrored)) = self.mirror_route(name, ns) {
            return Some((mirrored.upstream.name.clone(), mirrored.upstream.allow_push));
        }
        let _ = (name, ns);
        None
    }

    /// Makes a manifest a client pushes into a mirrored name (where `allow_push` lets it) the
    /// registry's own: never evicted, even if a mirror fetched the same digest before. Done
    /// before the push is stored, so a crash between leaves a kept manifest unevictable
    /// rather than a pushed one evictable.
    pub(crate) async fn disown_pushed_manifest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> RegistryResult<()> {
        #[cfg(feature = "mirror")]
        if let Some((_, mirrored)) = self.mirror_route(repository.as_str(), None)
            && mirrored.upstream.evict_after.is_some()
        {
            self.inner
                .metadata
                .disown_mirrored_manifest(repository, digest)
                .await?;
        }
        let _ = (repository, digest);
        Ok(())
    }

    /// Evicts (with `apply`; else counts) the manifests kept from upstreams that nobody
    /// pulled for their `evict_after`, after writing down this process's pulls; part of every
    /// garbage collection pass.
    pub(crate) async fn evict_unpulled(&self, now: i64, apply: bool) -> RegistryResult<u64> {
        #[cfg(feature = "mirror")]
        if let Some(mirror) = &self.inner.mirror {
            return self.evict_unpulled_through(mirror, now, apply).await;
        }
        let _ = (now, apply);
        Ok(0)
    }

    /// Writes down this process's pulls of kept manifests every few seconds (batched: not
    /// one write per pull) until `shutdown` resolves; nothing to do without upstreams.
    pub async fn run_mirror_pull_flush(self, shutdown: impl std::future::Future<Output = ()>) {
        #[cfg(feature = "mirror")]
        if self.inner.mirror.is_some() {
            super::maintenance::every(
                through::PULL_FLUSH,
                through::PULL_FLUSH,
                shutdown,
                "writing down mirrored pulls",
                crate::instruments::MIRROR_PULL_FLUSHES,
                || self.flush_mirror_pulls(),
            )
            .await;
            // What was noted since the last write, while the process drains (best effort).
            if let Err(e) = self.flush_mirror_pulls().await {
                tracing::warn!(error = %e, "writing down mirrored pulls at shutdown failed");
            }
            return;
        }
        drop(shutdown);
    }

    /// A manifest for a pull: read through to the upstream `repository` maps to, if any.
    pub async fn pull_manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        ns: Option<&str>,
    ) -> RegistryResult<PulledManifest> {
        #[cfg(feature = "mirror")]
        if let Some((mirror, mirrored)) = self.mirror_route(repository.as_str(), ns) {
            return self
                .pull_manifest_through(mirror, mirrored, reference)
                .await;
        }
        let _ = ns;
        Ok(PulledManifest {
            record: self.manifest(repository, reference).await?,
            stale: None,
        })
    }

    /// A blob for a pull: kept, or fetched once from the upstream `repository` maps to.
    pub async fn pull_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        ns: Option<&str>,
        read: BlobRead,
    ) -> RegistryResult<PulledBlob> {
        #[cfg(feature = "mirror")]
        if let Some((mirror, mirrored)) = self.mirror_route(repository.as_str(), ns) {
            return self.pull_blob_through(mirror, mirrored, digest, read).await;
        }
        let _ = (ns, read);
        Ok(PulledBlob::Stored(self.blob(repository, digest).await?))
    }

    /// The tags of `repository` for a listing: the upstream's when it maps to one (what is
    /// kept here when the upstream cannot be asked).
    pub async fn pull_tags(
        &self,
        repository: &RepositoryName,
        page: Page<'_>,
        ns: Option<&str>,
    ) -> RegistryResult<Vec<String>> {
        #[cfg(feature = "mirror")]
        if let Some((mirror, mirrored)) = self.mirror_route(repository.as_str(), ns) {
            return self.pull_tags_through(mirror, mirrored, page).await;
        }
        let _ = ns;
        self.tags(repository, page).await
    }

    /// The bytes of the upstream fetch of `digest` that this process runs under the claim
    /// `owner`, for another replica's pull to follow (see `follow.rs`): the size the upstream
    /// announced, and the bytes from the start. `None` when no such fetch runs here (it
    /// finished, failed, or runs elsewhere).
    pub fn relay_mirror_fetch(
        &self,
        digest: &Digest,
        owner: &str,
    ) -> Option<(Option<u64>, ByteStream)> {
        #[cfg(feature = "mirror")]
        if let Some(mirror) = &self.inner.mirror {
            return self.relay_mirror_fetch_through(mirror, digest, owner);
        }
        let _ = (digest, owner);
        None
    }
}
