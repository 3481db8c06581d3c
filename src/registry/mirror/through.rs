//! Reading through to upstream registries (feature `mirror`).
//!
//! - **Manifests by digest** are immutable: fetched once, kept.
//! - **Manifests by tag** are served from here for the upstream's tag TTL after the last check
//!   (recorded in the metadata store, so every replica shares it); after it, a `HEAD` asks the
//!   upstream for the tag's digest and the manifest is fetched again only when it moved. When
//!   the upstream cannot be asked, the kept manifest is served and marked stale.
//! - **Blobs**: one fetch per digest across every request on every replica. The fetcher
//!   claims the digest in the metadata store with a lease it renews while it fetches (or
//!   the others take it over once the lease runs out). The fetch runs in a task of its own,
//!   so the client that started it can leave without cancelling it for the others; it
//!   streams into an upload session, which verifies the digest before the blob is
//!   committed, and into a spill file that every pull of the blob reads and follows — here,
//!   or on another replica through this one's advertised URL — with the last chunk held
//!   back until the commit, so no client ever receives a whole body whose digest did not
//!   verify (`follow.rs`). Pulls that cannot follow wait for the blob to be stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use std::future::Future;

use tokio::sync::oneshot;

use super::follow::{RunningFetches, Spill, SpillWriter};
use super::{BlobRead, PulledBlob, PulledManifest};
use crate::error::{ErrorCode, RegistryError, RegistryResult};
use crate::instruments;
use crate::metadata::{BlobRecord, ManifestRecord, MirrorFetchClaim, MirrorPull, Page};
use crate::oci::{Digest, Reference, RepositoryName, media_type};
use crate::registry::manifests::ManifestOrigin;
use crate::registry::uploads::{BodyStream, ChunkSpec};
use crate::registry::{Registry, millis};
use crate::upstream::{
    ManifestRequest, Mirrored, UpstreamClient, UpstreamError, UpstreamManifest, Upstreams,
};

/// How often a pull waiting for another fetch looks whether the blob has been stored.
const WAIT_POLL: Duration = Duration::from_millis(200);
/// Longest a pull waits for someone else's fetch before answering 503.
const LONGEST_WAIT: Duration = Duration::from_secs(3600);
/// Where a replica serves its running fetches to the others (followed by the digest); the
/// request names the fetch's claim owner in [`RELAY_OWNER_HEADER`].
pub const RELAY_PATH: &str = "/_berth/mirror-fetches/";
/// The header naming the claim owner of the fetch a relay request follows.
pub const RELAY_OWNER_HEADER: &str = "berth-fetch-owner";
/// How long a replica gets to accept a relay connection before the pull waits for the
/// stored blob instead.
const RELAY_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a relayed body may go quiet (the relaying replica's own upstream read times out
/// first).
const RELAY_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Manifests one eviction transaction deletes.
const EVICTION_BATCH: u32 = 500;

/// The media types a mirror asks upstreams for: every manifest and index kind it serves.
const ACCEPT: &[&str] = &[
    media_type::OCI_INDEX,
    media_type::OCI_MANIFEST,
    media_type::DOCKER_MANIFEST_LIST,
    media_type::DOCKER_MANIFEST,
];

/// How often a process writes down its pulls of kept manifests: a pull counts for eviction
/// at most this late on other replicas.
pub(super) const PULL_FLUSH: Duration = Duration::from_secs(10);

/// The configured upstreams, a client for each, and the pulls of kept manifests not written
/// down yet (by local name and digest: the latest time).
pub struct Mirror {
    upstreams: Upstreams,
    clients: HashMap<String, UpstreamClient>,
    pulls: std::sync::Mutex<HashMap<(String, Digest), i64>>,
    running: RunningFetches,
    /// Reads other replicas' running fetches.
    relay_http: reqwest::Client,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("upstreams", &self.upstreams)
            .finish()
    }
}

impl Mirror {
    /// A client for each upstream (CA files are read now: a bad one stops the start).
    pub fn new(upstreams: Upstreams) -> Result<Mirror, UpstreamError> {
        let clients = upstreams
            .iter()
            .map(|u| Ok((u.name.clone(), UpstreamClient::new(u.clone())?)))
            .collect::<Result<_, UpstreamError>>()?;
        // Straight to the peer: its owner header must not reach a proxy or a redirect target.
        let relay_http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(RELAY_CONNECT_TIMEOUT)
            .read_timeout(RELAY_READ_TIMEOUT)
            .build()
            .map_err(|e| {
                UpstreamError::Settings(format!("the client for other replicas' fetches: {e}"))
            })?;
        Ok(Mirror {
            upstreams,
            clients,
            pulls: std::sync::Mutex::default(),
            running: RunningFetches::default(),
            relay_http,
        })
    }

    fn note_pull(&self, pull: MirrorPull) {
        let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
        let last = pulls
            .entry((pull.repository, pull.digest))
            .or_insert(pull.at);
        *last = (*last).max(pull.at);
    }

    fn take_pulls(&self) -> Vec<MirrorPull> {
        let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
        let mut taken: Vec<MirrorPull> = std::mem::take(&mut *pulls)
            .into_iter()
            .map(|((repository, digest), at)| MirrorPull {
                repository,
                digest,
                at,
            })
            .collect();
        // Rows are locked in key order, as every writer does, so that two replicas writing
        // the same pulls never wait on each other in opposite orders.
        taken.sort_by(|a, b| {
            (&a.repository, a.digest.as_str()).cmp(&(&b.repository, b.digest.as_str()))
        });
        taken
    }

    fn client(&self, mirrored: &Mirrored<'_>) -> RegistryResult<&UpstreamClient> {
        self.clients
            .get(&mirrored.upstream.name)
            .ok_or_else(|| RegistryError::internal("an upstream without a client"))
    }
}

fn unavailable(mirrored: &Mirrored<'_>, error: &UpstreamError) -> RegistryError {
    RegistryError::unavailable(format!(
        "{} is mirrored from upstream {} and is not kept here: {error}",
        mirrored.local_name, mirrored.upstream.name
    ))
}

fn counted(metric: &'static str, upstream: &str, outcome: &'static str) {
    metrics::counter!(metric, "upstream" => upstream.to_owned(), "outcome" => outcome).increment(1);
}

impl Registry {
    /// The mirror and the upstream `name` maps to, if any (see [`Upstreams::route`]).
    pub(super) fn mirror_route(
        &self,
        name: &str,
        ns: Option<&str>,
    ) -> Option<(&Mirror, Mirrored<'_>)> {
        let mirror = self.inner.mirror.as_ref()?;
        Some((mirror, mirror.upstreams.route(name, ns)?))
    }

    /// [`Registry::pull_manifest`] with the mirror in this build; the pull is noted for
    /// eviction.
    pub(super) async fn pull_manifest_through(
        &self,
        mirror: &Mirror,
        mirrored: Mirrored<'_>,
        reference: &Reference,
    ) -> RegistryResult<PulledManifest> {
        let evicts = mirrored.upstream.evict_after.is_some();
        let local = mirrored.local_name.clone();
        let pulled = self
            .read_manifest_through(mirror, mirrored, reference)
            .await?;
        if evicts {
            mirror.note_pull(MirrorPull {
                repository: local,
                digest: pulled.record.digest.clone(),
                at: self.now(),
            });
        }
        Ok(pulled)
    }

    /// Writes down the pulls noted since the last time (kept for the next time if that fails).
    pub(super) async fn flush_mirror_pulls(&self) -> RegistryResult<()> {
        let Some(mirror) = &self.inner.mirror else {
            return Ok(());
        };
        let pulls = mirror.take_pulls();
        if let Err(e) = self.inner.metadata.record_mirror_pulls(&pulls).await {
            for pull in pulls {
                mirror.note_pull(pull);
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// [`Registry::evict_unpulled`] with the mirror in this build.
    pub(super) async fn evict_unpulled_through(
        &self,
        mirror: &Mirror,
        now: i64,
        apply: bool,
    ) -> RegistryResult<u64> {
        if !mirror.upstreams.iter().any(|u| u.evict_after.is_some()) {
            return Ok(0);
        }
        if apply {
            // This process's own pulls count too.
            self.flush_mirror_pulls().await?;
        }
        let mut evicted = 0;
        for upstream in mirror.upstreams.iter() {
            let Some(after) = upstream.evict_after else {
                continue;
            };
            let cutoff = now.saturating_sub(millis(after));
            if !apply {
                evicted += self
                    .inner
                    .metadata
                    .evict_unpulled_manifests(&upstream.name, cutoff, u32::MAX, now, false)
                    .await?;
                continue;
            }
            // An index goes before its children, which the next batch may then take.
            let mut from_upstream = 0;
            loop {
                let batch = self
                    .inner
                    .metadata
                    .evict_unpulled_manifests(&upstream.name, cutoff, EVICTION_BATCH, now, true)
                    .await?;
                from_upstream += batch;
                if batch == 0 {
                    break;
                }
            }
            if from_upstream > 0 {
                tracing::info!(upstream = %upstream.name, evicted = from_upstream, "evicted mirrored manifests nobody pulled");
            }
            evicted += from_upstream;
        }
        Ok(evicted)
    }

    async fn read_manifest_through(
        &self,
        mirror: &Mirror,
        mirrored: Mirrored<'_>,
        reference: &Reference,
    ) -> RegistryResult<PulledManifest> {
        let local = RepositoryName::parse(&mirrored.local_name)?;
        let client = mirror.client(&mirrored)?;
        let upstream = mirrored.upstream.name.as_str();
        let kept = self.inner.metadata.manifest(&local, reference).await?;
        let tag = match reference {
            Reference::Digest(_) => {
                if let Some(record) = kept {
                    counted(instruments::MIRROR_MANIFESTS, upstream, "cached");
                    return Ok(PulledManifest {
                        record,
                        stale: None,
                    });
                }
                None
            }
            Reference::Tag(tag) => {
                let ttl = millis(mirrored.upstream.tag_ttl);
                let checked = self.inner.metadata.mirror_tag_checked(&local, tag).await?;
                if let Some(record) = &kept
                    && checked.is_some_and(|at| self.now().saturating_sub(at) < ttl)
                {
                    counted(instruments::MIRROR_MANIFESTS, upstream, "cached");
                    return Ok(PulledManifest {
                        record: record.clone(),
                        stale: None,
                    });
                }
                Some(tag)
            }
        };
        let reference_text = reference.to_string();
        if let (Some(tag), Some(record)) = (tag, &kept) {
            // Revalidate with a HEAD, which Docker Hub does not count as a pull.
            match client
                .manifest(
                    &mirrored.remote_name,
                    &reference_text,
                    ACCEPT,
                    ManifestRequest::Head,
                )
                .await
            {
                Ok(head) if head.digest == record.digest => {
                    self.inner
                        .metadata
                        .record_mirror_tag_check(&local, tag, self.now())
                        .await?;
                    counted(instruments::MIRROR_MANIFESTS, upstream, "revalidated");
                    return Ok(PulledManifest {
                        record: record.clone(),
                        stale: None,
                    });
                }
                // Moved, or the upstream's HEAD said too little: fetch it.
                Ok(_) | Err(UpstreamError::Invalid { .. }) => {}
                // Where pushes are allowed, a tag the upstream lacks is the registry's own.
                Err(UpstreamError::NotFound { .. }) if mirrored.upstream.allow_push => {
                    return Ok(PulledManifest {
                        record: record.clone(),
                        stale: None,
                    });
                }
                Err(UpstreamError::NotFound { .. }) => {
                    counted(instruments::MIRROR_MANIFESTS, upstream, "missing");
                    return Err(self.upstream_lacks(&mirrored, reference));
                }
                Err(e) => return Ok(self.stale(&mirrored, record.clone(), e)),
            }
        }
        let fetched = client
            .manifest(
                &mirrored.remote_name,
                &reference_text,
                ACCEPT,
                ManifestRequest::Get,
            )
            .await;
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(UpstreamError::NotFound { .. }) => {
                counted(instruments::MIRROR_MANIFESTS, upstream, "missing");
                return Err(self.upstream_lacks(&mirrored, reference));
            }
            Err(e) => {
                return match kept {
                    Some(record) => Ok(self.stale(&mirrored, record, e)),
                    None => {
                        counted(instruments::MIRROR_MANIFESTS, upstream, "failed");
                        tracing::warn!(upstream, repository = %local, %reference, error = %e, "a mirrored manifest could not be fetched");
                        Err(unavailable(&mirrored, &e))
                    }
                };
            }
        };
        let evicted_from = mirrored.upstream.evict_after.map(|_| upstream);
        let record = self
            .keep_manifest(&local, reference, fetched, evicted_from)
            .await?;
        if let Some(tag) = tag {
            self.inner
                .metadata
                .record_mirror_tag_check(&local, tag, self.now())
                .await?;
        }
        counted(instruments::MIRROR_MANIFESTS, upstream, "fetched");
        Ok(PulledManifest {
            record,
            stale: None,
        })
    }

    /// [`Registry::pull_tags`] with the mirror in this build.
    pub(super) async fn pull_tags_through(
        &self,
        mirror: &Mirror,
        mirrored: Mirrored<'_>,
        page: Page<'_>,
    ) -> RegistryResult<Vec<String>> {
        let client = mirror.client(&mirrored)?;
        match client
            .tags(&mirrored.remote_name, page.limit, page.after)
            .await
        {
            Ok(tags) => Ok(tags),
            Err(UpstreamError::NotFound { .. }) => Err(RegistryError::new(
                ErrorCode::NameUnknown,
                format!(
                    "upstream {} has no repository {}",
                    mirrored.upstream.name, mirrored.remote_name
                ),
            )),
            Err(e) => {
                tracing::warn!(upstream = %mirrored.upstream.name, repository = %mirrored.local_name, error = %e, "listing the tags kept here: the upstream could not be asked");
                let local = RepositoryName::parse(&mirrored.local_name)?;
                self.tags(&local, page)
                    .await
                    .map_err(|_| unavailable(&mirrored, &e))
            }
        }
    }

    /// Stores a manifest read from an upstream under `reference` (its tag, if by tag), recorded
    /// for eviction when its upstream (`evicted_from`) evicts what nobody pulls.
    async fn keep_manifest(
        &self,
        local: &RepositoryName,
        reference: &Reference,
        fetched: UpstreamManifest,
        evicted_from: Option<&str>,
    ) -> RegistryResult<ManifestRecord> {
        let content = fetched
            .body
            .ok_or_else(|| RegistryError::internal("a manifest GET without a body"))?;
        let reference = match reference {
            Reference::Tag(_) => reference.clone(),
            Reference::Digest(_) => Reference::Digest(fetched.digest.clone()),
        };
        // Recorded as kept before it is stored: a crash between the two leaves a row without
        // a manifest, which eviction forgets, and never a kept manifest eviction cannot see.
        // (The digest of a GET is computed from its bytes, which are what is stored.)
        if let Some(upstream) = evicted_from {
            self.inner
                .metadata
                .keep_mirrored_manifest(local, &fetched.digest, upstream, self.now())
                .await?;
        }
        let pushed = self
            .store_manifest(
                local,
                &reference,
                &[],
                Some(&fetched.media_type),
                &content,
                ManifestOrigin::Mirror,
            )
            .await?;

        Ok(ManifestRecord {
            digest: pushed.digest,
            media_type: fetched.media_type,
            content,
            subject: pushed.parsed.subject,
        })
    }

    fn stale(
        &self,
        mirrored: &Mirrored<'_>,
        record: ManifestRecord,
        error: UpstreamError,
    ) -> PulledManifest {
        let upstream = mirrored.upstream.name.as_str();
        counted(instruments::MIRROR_MANIFESTS, upstream, "stale");
        tracing::warn!(upstream, repository = %mirrored.local_name, digest = %record.digest, error = %error, "serving a kept manifest: its upstream could not be asked");
        PulledManifest {
            record,
            stale: Some(format!("upstream {upstream} could not be asked: {error}")),
        }
    }

    fn upstream_lacks(
        &self,
        mirrored: &Mirrored<'_>,
        what: &dyn std::fmt::Display,
    ) -> RegistryError {
        RegistryError::new(
            ErrorCode::ManifestUnknown,
            format!(
                "upstream {} has no manifest {what} in {}",
                mirrored.upstream.name, mirrored.remote_name
            ),
        )
    }

    /// [`Registry::pull_blob`] with the mirror in this build.
    pub(super) async fn pull_blob_through(
        &self,
        mirror: &Mirror,
        mirrored: Mirrored<'_>,
        digest: &Digest,
        read: BlobRead,
    ) -> RegistryResult<PulledBlob> {
        let local = RepositoryName::parse(&mirrored.local_name)?;
        if let Some(blob) = self.inner.metadata.blob(&local, digest).await? {
            metrics::counter!(instruments::MIRROR_BLOB_HITS, "upstream" => mirrored.upstream.name.clone())
                .increment(1);
            return Ok(PulledBlob::Stored(blob));
        }
        if digest.algorithm().is_none() {
            return Err(crate::registry::unsupported_digest_algorithm(digest));
        }
        let client = mirror.client(&mirrored)?;
        if read == BlobRead::Head {
            match client.blob_size(&mirrored.remote_name, digest).await {
                Ok(Some(size)) => return Ok(PulledBlob::Upstream { size }),
                // A chained cache answers a HEAD for what it has not fetched yet with 404:
                // only a GET makes it fetch. Fetch, and answer once it is stored.
                Ok(None) => {}
                Err(e) => return Err(self.blob_unavailable(&mirrored, digest, e)),
            }
        }
        let started = std::time::Instant::now();
        let mut waited = false;
        loop {
            if read == BlobRead::Get
                && let Some(spill) = mirror.running.fetching_into(digest, &local)
            {
                joined(&mirrored, "followed");
                return Ok(followed(&spill));
            }
            let now = self.now();
            let claim = MirrorFetchClaim {
                repository: local.clone(),
                owner: uuid::Uuid::new_v4().to_string(),
                relay: self.inner.options.advertise_url.clone(),
                lease_until: now.saturating_add(millis(self.inner.options.mirror_fetch_lease)),
            };
            if self
                .inner
                .metadata
                .claim_mirror_fetch(digest, &claim, now)
                .await?
            {
                // Someone may have finished between the look above and the claim, or the
                // bytes may be here under another name.
                if let Some(blob) = self.kept_blob(client, &mirrored, &local, digest).await? {
                    self.release_fetch(digest, &claim.owner).await;
                    return Ok(PulledBlob::Stored(blob));
                }
                let started = self.start_fetch(client, &mirrored, claim, digest).await?;
                if read == BlobRead::Get
                    && let Some(spill) = &started.spill
                {
                    return Ok(followed(spill));
                }
                // A HEAD (only reached when the upstream's HEAD did not know the blob), or a
                // fetch without a spill (none could be written): answered once it is stored.
                let outcome = started
                    .finished
                    .await
                    .unwrap_or_else(|_| Err("the fetch ended without a word".to_owned()));
                return match self.inner.metadata.blob(&local, digest).await? {
                    Some(blob) => Ok(PulledBlob::Stored(blob)),
                    None => Err(RegistryError::unavailable(format!(
                        "blob {digest} from upstream {} was not stored: {}",
                        mirrored.upstream.name,
                        outcome.err().unwrap_or_default()
                    ))),
                };
            } else if read == BlobRead::Get {
                // Asked again on every round: the fetcher's spill appears only once its
                // upstream has answered.
                if let Some(relayed) = self.follow_relay(mirror, &local, digest).await? {
                    joined(&mirrored, "relayed");
                    return Ok(relayed);
                }
            }
            if !waited {
                waited = true;
                joined(&mirrored, "stored");
            }
            if started.elapsed() > LONGEST_WAIT {
                return Err(RegistryError::unavailable(format!(
                    "blob {digest} is still being fetched from upstream {}; try again later",
                    mirrored.upstream.name
                )));
            }
            tokio::time::sleep(WAIT_POLL).await;
            if let Some(blob) = self.inner.metadata.blob(&local, digest).await? {
                return Ok(PulledBlob::Stored(blob));
            }
        }
    }

    /// The bytes of another replica's running fetch of `digest` into `local`, read through
    /// that replica, when it advertises where; `None` when there is no such fetch or the
    /// replica cannot be reached (the pull then waits for the blob to be stored).
    async fn follow_relay(
        &self,
        mirror: &Mirror,
        local: &RepositoryName,
        digest: &Digest,
    ) -> RegistryResult<Option<PulledBlob>> {
        let Some(claim) = self.inner.metadata.mirror_fetch_claim(digest).await? else {
            return Ok(None);
        };
        let Some(relay) = claim.relay.as_deref() else {
            return Ok(None);
        };
        if &claim.repository != local
            || claim.lease_until < self.now()
            || self.inner.options.advertise_url.as_deref() == Some(relay)
        {
            return Ok(None);
        }
        let url = format!("{relay}{RELAY_PATH}{digest}");
        let answer = mirror
            .relay_http
            .get(&url)
            .header(RELAY_OWNER_HEADER, &claim.owner)
            .send()
            .await;
        let answer = match answer {
            Ok(answer) if answer.status() == reqwest::StatusCode::OK => answer,
            // Finished (or failed) in the meantime: the stored blob answers.
            Ok(answer) if answer.status() == reqwest::StatusCode::NOT_FOUND => return Ok(None),
            Ok(answer) => {
                tracing::warn!(%url, status = %answer.status(), "a replica's mirror fetch could not be followed; waiting for it to be stored");
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(%url, error = %e, "a replica's mirror fetch could not be followed; waiting for it to be stored");
                return Ok(None);
            }
        };
        let size = answer.content_length();
        let body = answer
            .bytes_stream()
            .map(|chunk| {
                chunk.map_err(|e| {
                    crate::storage::StorageError::Io(std::io::Error::other(format!(
                        "following a replica's upstream fetch failed: {e}"
                    )))
                })
            })
            .boxed();
        Ok(Some(PulledBlob::Fetching { size, body }))
    }

    /// [`Registry::relay_mirror_fetch`] with the mirror in this build.
    pub(super) fn relay_mirror_fetch_through(
        &self,
        mirror: &Mirror,
        digest: &Digest,
        owner: &str,
    ) -> Option<(Option<u64>, crate::storage::ByteStream)> {
        let spill = mirror.running.owned_by(digest, owner)?;
        Some((spill.size, spill.follow()))
    }

    /// `digest` linked into `local`; or, when its bytes are stored under another name and
    /// the upstream confirms it has the blob, linked now without fetching. Only with that
    /// confirmation: a digest pulled through a mirrored name must not reach bytes that only
    /// the registry's own (perhaps private) repositories hold.
    async fn kept_blob(
        &self,
        client: &UpstreamClient,
        mirrored: &Mirrored<'_>,
        local: &RepositoryName,
        digest: &Digest,
    ) -> RegistryResult<Option<BlobRecord>> {
        if let Some(blob) = self.inner.metadata.blob(local, digest).await? {
            return Ok(Some(blob));
        }
        if self.inner.metadata.stored_blob(digest).await?.is_none() {
            return Ok(None);
        }
        // Unknown or unanswered: fetch it (a fetch of bytes already stored costs the
        // transfer, not the space: the commit finds the stored blob).
        match client.blob_size(&mirrored.remote_name, digest).await {
            Ok(Some(_)) => Ok(self
                .inner
                .metadata
                .mount_blob(local, digest, None, None, self.now())
                .await?),
            Ok(None) | Err(_) => Ok(None),
        }
    }

    fn blob_unavailable(
        &self,
        mirrored: &Mirrored<'_>,
        digest: &Digest,
        error: UpstreamError,
    ) -> RegistryError {
        match error {
            UpstreamError::NotFound { .. } => RegistryError::new(
                ErrorCode::BlobUnknown,
                format!(
                    "upstream {} has no blob {digest} in {}",
                    mirrored.upstream.name, mirrored.remote_name
                ),
            ),
            error => {
                tracing::warn!(upstream = %mirrored.upstream.name, %digest, %error, "a mirrored blob could not be fetched");
                unavailable(mirrored, &error)
            }
        }
    }

    async fn release_fetch(&self, digest: &Digest, owner: &str) {
        // A release that fails leaves a lease that runs out by itself.
        if let Err(e) = self
            .inner
            .metadata
            .release_mirror_fetch(digest, owner)
            .await
        {
            tracing::warn!(%digest, error = %e, "could not release a mirror fetch claim");
        }
    }

    /// Runs the fetch `claim` won in a task of its own, renewing the claim from now on; the
    /// upstream's answer to the GET (its failure is this request's answer) comes back here,
    /// and with it the spill the fetch writes to, which every pull of the blob reads.
    async fn start_fetch(
        &self,
        client: &UpstreamClient,
        mirrored: &Mirrored<'_>,
        claim: MirrorFetchClaim,
        digest: &Digest,
    ) -> RegistryResult<StartedFetch> {
        let (opened, opening) = oneshot::channel();
        let (ended, finished) = oneshot::channel();
        let fetch = Fetch {
            client: client.clone(),
            remote: mirrored.remote_name.clone(),
            local: claim.repository,
            digest: digest.clone(),
            owner: claim.owner,
            relay: claim.relay,
        };
        let registry = self.clone();
        tokio::spawn(async move {
            // Unlisted however the fetch ends, a panic included, so that no pull follows a
            // spill nobody writes any more.
            let listed = Listed {
                registry: registry.clone(),
                digest: fetch.digest.clone(),
                owner: fetch.owner.clone(),
            };
            let outcome = registry
                .renewing_claim(&fetch, registry.fetch(&fetch, opened))
                .await;
            let _ = ended.send(outcome);
            drop(listed);
            registry.release_fetch(&fetch.digest, &fetch.owner).await;
        });
        match opening.await {
            Ok(Ok(spill)) => Ok(StartedFetch { spill, finished }),
            Ok(Err(e)) => {
                counted(
                    instruments::MIRROR_BLOB_FETCHES,
                    &mirrored.upstream.name,
                    "failed",
                );
                Err(self.blob_unavailable(mirrored, digest, e))
            }
            Err(_) => Err(RegistryError::internal("a mirror fetch ended unopened")),
        }
    }

    /// Runs `work` while renewing `fetch`'s claim every third of the lease (two renewals can
    /// fail before it runs out).
    async fn renewing_claim<T>(&self, fetch: &Fetch, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        let mut renewal = tokio::time::interval(self.inner.options.mirror_fetch_lease / 3);
        renewal.tick().await;
        let lease = millis(self.inner.options.mirror_fetch_lease);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = renewal.tick() => {
                    let now = self.now();
                    let claim = MirrorFetchClaim {
                        repository: fetch.local.clone(),
                        owner: fetch.owner.clone(),
                        relay: fetch.relay.clone(),
                        lease_until: now.saturating_add(lease),
                    };
                    if let Err(e) = self.inner.metadata
                        .claim_mirror_fetch(&fetch.digest, &claim, now)
                        .await
                    {
                        tracing::warn!(digest = %fetch.digest, error = %e, "could not renew a mirror fetch claim");
                    }
                }
            }
        }
    }

    /// Asks the upstream for the blob (telling `opened` how that went, with the spill its
    /// readers follow) and streams it into storage and the spill.
    async fn fetch(
        &self,
        fetch: &Fetch,
        opened: oneshot::Sender<Result<Option<Arc<Spill>>, UpstreamError>>,
    ) -> Result<(), String> {
        let upstream = fetch.client.settings().name.as_str();
        let (local, digest) = (&fetch.local, &fetch.digest);
        let blob = match fetch.client.blob(&fetch.remote, digest).await {
            Ok(blob) => blob,
            Err(e) => {
                let why = e.to_string();
                let _ = opened.send(Err(e));
                return Err(why);
            }
        };
        let spill = match Spill::create(
            &std::env::temp_dir(),
            local.clone(),
            fetch.owner.clone(),
            blob.size,
        ) {
            Ok(spill) => {
                let spill = Arc::new(spill);
                if let Some(mirror) = &self.inner.mirror {
                    mirror.running.insert(digest, Arc::clone(&spill));
                }
                Some(spill)
            }
            Err(e) => {
                tracing::warn!(%digest, error = %e, "no spill for a mirror fetch: its pulls wait for the blob to be stored");
                None
            }
        };
        let _ = opened.send(Ok(spill.clone()));
        let writer = Arc::new(tokio::sync::Mutex::new(spill.map(SpillWriter::new)));
        let fetched = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut body: BodyStream = {
            let (writer, fetched) = (Arc::clone(&writer), Arc::clone(&fetched));
            blob.body
                .then(move |chunk| {
                    let (writer, fetched) = (Arc::clone(&writer), Arc::clone(&fetched));
                    async move {
                        let chunk = chunk.map_err(std::io::Error::other)?;
                        fetched.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        if let Some(writer) = writer.lock().await.as_mut() {
                            writer.pass(chunk.clone()).await;
                        }
                        Ok(chunk)
                    }
                })
                .boxed()
        };
        let outcome = self
            .filling()
            .upload_blob(
                local,
                digest,
                ChunkSpec {
                    start: None,
                    length: blob.size,
                },
                &mut body,
            )
            .await;
        drop(body);
        let writer = writer.lock().await.take();
        let bytes = fetched.load(std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(instruments::MIRROR_FETCHED_BYTES, "upstream" => upstream.to_owned())
            .increment(bytes);
        match outcome {
            Ok(_) => {
                counted(instruments::MIRROR_BLOB_FETCHES, upstream, "stored");
                tracing::info!(upstream, repository = %local, %digest, bytes, "fetched a blob from upstream");
                if let Some(writer) = writer {
                    writer.stored().await;
                }
                Ok(())
            }
            Err(e) => {
                counted(instruments::MIRROR_BLOB_FETCHES, upstream, "failed");
                tracing::warn!(upstream, repository = %local, %digest, error = %e, "a blob fetch from upstream failed");
                let why = format!("fetching {digest} from upstream {upstream} failed: {e}");
                if let Some(writer) = writer {
                    writer.failed(why.clone());
                }
                Err(why)
            }
        }
    }
}

/// A fetch just started: the spill its pulls read (none when it could not be written), and
/// its outcome once it ends.
struct StartedFetch {
    spill: Option<Arc<Spill>>,
    finished: oneshot::Receiver<Result<(), String>>,
}

/// A fetch listed among the running ones, unlisted when this is dropped.
struct Listed {
    registry: Registry,
    digest: Digest,
    owner: String,
}

impl Drop for Listed {
    fn drop(&mut self) {
        if let Some(mirror) = &self.registry.inner.mirror {
            mirror.running.remove(&self.digest, &self.owner);
        }
    }
}

/// One blob fetch: what to ask which upstream for, where to keep it, and who claimed it.
struct Fetch {
    client: UpstreamClient,
    remote: String,
    local: RepositoryName,
    digest: Digest,
    owner: String,
    relay: Option<String>,
}

/// A pull answered with a running fetch's bytes.
fn followed(spill: &Arc<Spill>) -> PulledBlob {
    PulledBlob::Fetching {
        size: spill.size,
        body: spill.follow(),
    }
}

/// Counts a pull that joined a fetch already running, by how: reading its spill here
/// (`followed`), through the replica running it (`relayed`), or waiting for it to be stored.
fn joined(mirrored: &Mirrored<'_>, how: &'static str) {
    metrics::counter!(instruments::MIRROR_FETCH_WAITS, "upstream" => mirrored.upstream.name.clone(), "how" => how)
        .increment(1);
}
