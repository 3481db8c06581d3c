//! Metadata in process memory, for tests and embedding. Nothing survives the process.
//!
//! One file past 800 lines on purpose: it is the whole `MetadataStore` contract over plain maps
//! under one lock, each method a few lines, read side by side with the SQL store's as the
//! reference of what every method means; splitting it would scatter that one lock's state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::events::{
    DeliveryOutcome, DeliveryState, EndpointBacklog, EndpointClaim, EventAction, EventOrigin,
    NewEvent, OutboxEvent, OutboxQuery, Subscriptions,
};
use super::{
    BlobCommit, BlobRecord, Census, Collected, DanglingKind, DanglingReference, Garbage,
    ListedManifest, ManifestDeletion, ManifestRecord, MetadataResult, MetadataStore,
    MirrorFetchClaim, MirrorPull, NewManifest, Page, PushedBefore, PutManifestOutcome,
    ReferrerRecord, SessionUpdate, TagGuard, UploadCheckpoint, UploadSession,
};
use crate::oci::{Digest, ParsedManifest, Reference, RepositoryName, Tag};
use crate::storage::PartRecord;

/// A metadata store in process memory.
#[derive(Debug, Default)]
pub struct MemoryMetadataStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    repositories: BTreeMap<String, Repository>,
    blobs: HashMap<Digest, BlobRecord>,
    uploads: HashMap<String, Upload>,
    garbage: BTreeMap<i64, Garbage>,
    next_garbage_id: i64,
    /// Links and blobs to review for collection, with the time they were queued (the same
    /// queues as the SQL stores').
    link_reviews: HashMap<(String, Digest), i64>,
    blob_reviews: HashMap<Digest, i64>,
    /// A mirror's tag checks, by (repository, tag), and its fetch claims: (owner, lease end).
    mirror_tag_checks: HashMap<(String, String), i64>,
    mirror_fetches: HashMap<Digest, MirrorFetchClaim>,
    /// Manifests kept from an upstream, by (repository, digest): (upstream, last pull).
    mirror_pulls: HashMap<(String, Digest), (String, i64)>,
    /// The event outbox, by `seq`, the changes it is written for, and the endpoint claims:
    /// (owner, lease end).
    subscriptions: Subscriptions,
    outbox: BTreeMap<i64, OutboxEvent>,
    event_endpoints: HashMap<String, (String, i64)>,
}

#[derive(Debug, Default)]
struct Repository {
    /// Linked blobs, with the time of their link.
    blobs: BTreeMap<Digest, i64>,
    manifests: BTreeMap<Digest, StoredManifest>,
    tags: BTreeMap<String, Digest>,
    /// When each tag was last pushed.
    tag_pushed: HashMap<String, i64>,
}

#[derive(Debug)]
struct StoredManifest {
    record: ManifestRecord,
    artifact_type: Option<String>,
    annotations: Option<BTreeMap<String, String>>,
    blobs: Vec<Digest>,
    children: Vec<Digest>,
    created_at: i64,
}

#[derive(Debug)]
struct Upload {
    session: UploadSession,
    next_part: u32,
    parts: BTreeMap<u32, PartRecord>,
    /// Staged rows: their start offsets and bytes, in upload order.
    staged: Vec<(u64, Vec<u8>)>,
}

impl Upload {
    fn staged_len(&self) -> u64 {
        self.staged.iter().map(|(_, b)| b.len() as u64).sum()
    }
}

impl State {
    fn queue_garbage(&mut self, upload_id: &str, store_state: &str) -> i64 {
        self.next_garbage_id += 1;
        let id = self.next_garbage_id;
        self.garbage.insert(
            id,
            Garbage {
                id,
                upload_id: upload_id.to_owned(),
                store_state: store_state.to_owned(),
                storage_key: None,
            },
        );
        id
    }

    /// Writes the outbox rows of `events` for the endpoints subscribed to them.
    fn record_events(&mut self, events: &[NewEvent]) {
        let rows: Vec<(NewEvent, String)> = self
            .subscriptions
            .rows(events)
            .map(|(e, endpoint)| (e.clone(), endpoint.to_owned()))
            .collect();
        for (event, endpoint) in rows {
            let seq = self.outbox.last_key_value().map_or(1, |(seq, _)| seq + 1);
            let next_attempt_at = event.at;
            self.outbox.insert(
                seq,
                OutboxEvent {
                    seq,
                    endpoint,
                    event,
                    state: DeliveryState::Pending,
                    attempts: 0,
                    next_attempt_at,
                    last_error: None,
                    settled_at: None,
                },
            );
        }
    }

    /// Makes `repository` unless it exists, recording its creation as asked for by
    /// `announce`'s origin (unless `None`).
    fn ensure_repository(
        &mut self,
        repository: &str,
        now: i64,
        announce: Option<&EventOrigin>,
    ) -> &mut Repository {
        if !self.repositories.contains_key(repository)
            && let Ok(name) = RepositoryName::parse(repository)
            && let Some(origin) = announce
        {
            self.record_events(&[
                NewEvent::new(EventAction::RepositoryCreate, &name, now).by(origin)
            ]);
        }
        self.repositories.entry(repository.to_owned()).or_default()
    }

    fn link(
        &mut self,
        repository: &str,
        digest: &Digest,
        now: i64,
        announce: Option<&EventOrigin>,
    ) {
        self.ensure_repository(repository, now, announce)
            .blobs
            .insert(digest.clone(), now);
        self.link_reviews
            .insert((repository.to_owned(), digest.clone()), now);
    }

    /// Whether a manifest of `repository` references the blob (any repository's, for `None`).
    fn referenced(&self, repository: Option<&str>, digest: &Digest) -> bool {
        self.repositories
            .iter()
            .filter(|(name, _)| repository.is_none_or(|r| r == name.as_str()))
            .any(|(_, repo)| repo.manifests.values().any(|m| m.blobs.contains(digest)))
    }

    fn delete_unreferenced_blob(&mut self, digest: &Digest) -> Collected {
        let linked = self
            .repositories
            .values()
            .any(|r| r.blobs.contains_key(digest));
        if linked || self.referenced(None, digest) {
            return Collected::default();
        }
        let Some(blob) = self.blobs.remove(digest) else {
            return Collected::default();
        };
        let id = self.queue_garbage("", "");
        if let Some(g) = self.garbage.get_mut(&id) {
            g.storage_key = Some(blob.storage_key.clone());
        }
        Collected {
            blobs: 1,
            bytes: blob.size,
            ..Collected::default()
        }
    }

    fn untagged(&self, repository: &str, digest: &Digest, cutoff: i64) -> bool {
        let Some(repo) = self.repositories.get(repository) else {
            return false;
        };
        let Some(m) = repo.manifests.get(digest) else {
            return false;
        };
        m.created_at <= cutoff
            && !repo.tags.values().any(|d| d == digest)
            && !repo.manifests.values().any(|p| p.children.contains(digest))
            && m.record
                .subject
                .as_ref()
                .is_none_or(|s| !repo.manifests.contains_key(s))
    }

    fn forget_manifest(
        &mut self,
        repository: &str,
        digest: &Digest,
        origin: &EventOrigin,
        now: i64,
    ) -> bool {
        let Some(repo) = self.repositories.get_mut(repository) else {
            return false;
        };
        let Some(stored) = repo.manifests.remove(digest) else {
            return false;
        };
        repo.tags.retain(|_, d| d != digest);
        let tags = &repo.tags;
        repo.tag_pushed.retain(|tag, _| tags.contains_key(tag));
        let size = stored.record.content.len() as u64;
        if let Ok(name) = RepositoryName::parse(repository) {
            self.record_events(&[NewEvent::new(EventAction::Delete, &name, now)
                .by(origin)
                .with_digest(digest)
                .with_object(&stored.record.media_type, size)]);
        }
        let Some(repo) = self.repositories.get_mut(repository) else {
            return true;
        };
        self.mirror_pulls
            .remove(&(repository.to_owned(), digest.clone()));
        for blob in stored.blobs {
            // A blob unlinked while the manifest kept it has no link to review: the blob is.
            if !repo.blobs.contains_key(&blob) {
                self.blob_reviews.insert(blob.clone(), now);
            }
            self.link_reviews.insert((repository.to_owned(), blob), now);
        }
        true
    }

    /// Why a push is refused, if it is: references missing, or an immutable tag taken.
    fn refused_push(&self, m: NewManifest<'_>) -> Option<PutManifestOutcome> {
        let empty = Repository::default();
        let repo = self
            .repositories
            .get(m.repository.as_str())
            .unwrap_or(&empty);
        let blobs: Vec<Digest> = m
            .parsed
            .blobs
            .iter()
            .filter(|d| !repo.blobs.contains_key(*d))
            .cloned()
            .collect();
        let manifests: Vec<Digest> = m
            .parsed
            .children
            .iter()
            .filter(|d| !repo.manifests.contains_key(*d))
            .cloned()
            .collect();
        if m.require_references && (!blobs.is_empty() || !manifests.is_empty()) {
            return Some(PutManifestOutcome::MissingReferences { blobs, manifests });
        }
        for tag in m.immutable {
            if let Some(current) = repo.tags.get(tag.as_str())
                && current != m.digest
            {
                return Some(PutManifestOutcome::ImmutableTag {
                    tag: tag.clone(),
                    current: current.clone(),
                });
            }
        }
        None
    }

    fn session_update(&self, id: &str) -> SessionUpdate {
        match self.uploads.get(id) {
            Some(u) => SessionUpdate::Conflict {
                offset: u.session.offset,
            },
            None => SessionUpdate::Gone,
        }
    }
}

fn page_of<'a, T: 'a>(
    items: impl Iterator<Item = (&'a String, T)>,
    page: Page<'_>,
) -> impl Iterator<Item = (&'a String, T)> {
    let after = page.after.unwrap_or("").to_owned();
    items
        .filter(move |(k, _)| k.as_str() > after.as_str())
        .take(page.limit.map(|l| l as usize).unwrap_or(usize::MAX))
}

impl MemoryMetadataStore {
    /// An empty store.
    pub fn new() -> MemoryMetadataStore {
        MemoryMetadataStore::default()
    }

    /// The same store, writing outbox rows for `subscriptions` from now on.
    pub fn with_subscriptions(self, subscriptions: Subscriptions) -> MemoryMetadataStore {
        self.state().subscriptions = subscriptions;
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl MetadataStore for MemoryMetadataStore {
    async fn ping(&self) -> MetadataResult<()> {
        Ok(())
    }

    async fn upload_count(&self) -> MetadataResult<u64> {
        Ok(self.state().uploads.len() as u64)
    }

    async fn census(&self) -> MetadataResult<Census> {
        let state = self.state();
        let repositories = state.repositories.values();
        let count = |n: usize| n as u64;
        Ok(Census {
            repositories: count(state.repositories.len()),
            blobs: count(state.blobs.len()),
            links: count(repositories.clone().map(|r| r.blobs.len()).sum()),
            manifests: count(repositories.clone().map(|r| r.manifests.len()).sum()),
            tags: count(repositories.map(|r| r.tags.len()).sum()),
            sessions: count(state.uploads.len()),
            staged: count(state.uploads.values().map(|u| u.staged.len()).sum()),
            parts: count(state.uploads.values().map(|u| u.parts.len()).sum()),
            garbage: count(state.garbage.len()),
            link_reviews: count(state.link_reviews.len()),
            blob_reviews: count(state.blob_reviews.len()),
        })
    }

    async fn repository_exists(&self, repository: &RepositoryName) -> MetadataResult<bool> {
        Ok(self.state().repositories.contains_key(repository.as_str()))
    }

    async fn repositories(&self, page: Page<'_>) -> MetadataResult<Vec<String>> {
        let state = self.state();
        Ok(page_of(state.repositories.iter(), page)
            .map(|(k, _)| k.clone())
            .collect())
    }

    async fn blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> MetadataResult<Option<BlobRecord>> {
        let state = self.state();
        let linked = state
            .repositories
            .get(repository.as_str())
            .is_some_and(|r| r.blobs.contains_key(digest));
        Ok(linked.then(|| state.blobs.get(digest).cloned()).flatten())
    }

    async fn mount_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        from: Option<&RepositoryName>,
        announce: Option<&EventOrigin>,
        now: i64,
    ) -> MetadataResult<Option<BlobRecord>> {
        let mut state = self.state();
        let found = match from {
            Some(from) => state
                .repositories
                .get(from.as_str())
                .is_some_and(|r| r.blobs.contains_key(digest)),
            None => state
                .repositories
                .values()
                .any(|r| r.blobs.contains_key(digest)),
        };
        let Some(record) = found.then(|| state.blobs.get(digest).cloned()).flatten() else {
            return Ok(None);
        };
        state.link(repository.as_str(), digest, now, announce);
        Ok(Some(record))
    }

    async fn unlink_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        origin: &EventOrigin,
        now: i64,
    ) -> MetadataResult<bool> {
        let mut state = self.state();
        let removed = state
            .repositories
            .get_mut(repository.as_str())
            .is_some_and(|r| r.blobs.remove(digest).is_some());
        if removed {
            state.blob_reviews.insert(digest.clone(), now);
            state.record_events(&[NewEvent::new(EventAction::BlobDelete, repository, now)
                .with_digest(digest)
                .by(origin)]);
        }
        Ok(removed)
    }

    async fn create_upload(&self, session: &UploadSession) -> MetadataResult<()> {
        self.state().uploads.insert(
            session.id.clone(),
            Upload {
                session: session.clone(),
                next_part: 1,
                parts: BTreeMap::new(),
                staged: Vec::new(),
            },
        );
        Ok(())
    }

    async fn upload(&self, id: &str) -> MetadataResult<Option<UploadSession>> {
        Ok(self.state().uploads.get(id).map(|u| u.session.clone()))
    }

    async fn upload_settled(&self, id: &str) -> MetadataResult<Option<UploadSession>> {
        // Every change is made under the state's lock: none is ever half-way.
        self.upload(id).await
    }

    async fn reserve_part_number(&self, id: &str) -> MetadataResult<u32> {
        let mut state = self.state();
        let upload = state.uploads.get_mut(id).ok_or_else(|| {
            super::MetadataError::Database(format!("upload session {id} is gone"))
        })?;
        upload.next_part += 1;
        Ok(upload.next_part - 1)
    }

    async fn checkpoint_upload(
        &self,
        id: &str,
        expected_offset: u64,
        cp: UploadCheckpoint<'_>,
    ) -> MetadataResult<SessionUpdate> {
        let mut state = self.state();
        let Some(upload) = state
            .uploads
            .get_mut(id)
            .filter(|u| u.session.offset == expected_offset && !u.session.committing)
        else {
            return Ok(state.session_update(id));
        };
        upload.session.offset = cp.offset;
        upload.session.algorithm = cp.algorithm;
        upload.session.hash_state = cp.hash_state.to_vec();
        upload.session.store_state = cp.store_state.to_owned();
        upload.session.updated_at = cp.now;
        upload.session.committing = cp.claim;
        if let Some(first) = cp.new_parts.iter().filter_map(|p| p.start).min() {
            upload
                .parts
                .retain(|_, p| p.start.is_none_or(|start| start < first));
        }
        for part in cp.new_parts {
            upload.parts.insert(part.number, part.clone());
        }
        if cp.clear_staged {
            upload.staged.clear();
        }
        if let Some(bytes) = cp.staged {
            upload
                .staged
                .push((cp.offset - bytes.len() as u64, bytes.to_vec()));
        }
        upload.session.staged_len = upload.staged_len();
        Ok(SessionUpdate::Saved)
    }

    async fn promote_staged(
        &self,
        id: &str,
        from: u64,
        to: u64,
        part: &PartRecord,
    ) -> MetadataResult<bool> {
        let mut state = self.state();
        let Some(upload) = state.uploads.get_mut(id).filter(|u| !u.session.committing) else {
            return Ok(false);
        };
        let mut end = from;
        let mut rows = 0;
        for (start, bytes) in upload.staged.iter().take_while(|(start, _)| *start < to) {
            if *start != end {
                return Ok(false);
            }
            end += bytes.len() as u64;
            rows += 1;
        }
        if rows == 0 || end != to {
            return Ok(false);
        }
        upload.staged.drain(..rows);
        upload.session.staged_len = upload.staged_len();
        upload.parts.insert(part.number, part.clone());
        Ok(true)
    }

    async fn upload_parts(&self, id: &str) -> MetadataResult<Vec<PartRecord>> {
        Ok(self
            .state()
            .uploads
            .get(id)
            .map(|u| u.parts.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn upload_staged(&self, id: &str) -> MetadataResult<(u64, Vec<u8>)> {
        let state = self.state();
        let Some(upload) = state.uploads.get(id) else {
            return Ok((0, Vec::new()));
        };
        let start = upload.staged.first().map_or(0, |(start, _)| *start);
        let rows: Vec<&[u8]> = upload.staged.iter().map(|(_, b)| b.as_slice()).collect();
        Ok((start, rows.concat()))
    }

    async fn begin_commit(
        &self,
        id: &str,
        expected_offset: u64,
        now: i64,
    ) -> MetadataResult<SessionUpdate> {
        let mut state = self.state();
        let Some(upload) = state
            .uploads
            .get_mut(id)
            .filter(|u| u.session.offset == expected_offset)
        else {
            return Ok(state.session_update(id));
        };
        upload.session.committing = true;
        upload.session.updated_at = now;
        Ok(SessionUpdate::Saved)
    }

    async fn commit_blob(
        &self,
        id: &str,
        blob: &BlobRecord,
        replacing: Option<&str>,
        announce: Option<&EventOrigin>,
        now: i64,
    ) -> MetadataResult<BlobCommit> {
        let mut state = self.state();
        let Some(upload) = state.uploads.get(id).filter(|u| u.session.committing) else {
            return Ok(BlobCommit::SessionGone);
        };
        let session = upload.session.clone();
        state.uploads.remove(id);
        let lost = match state.blobs.get(&blob.digest) {
            Some(existing) => replacing.filter(|key| *key == existing.storage_key),
            None => None,
        };
        let outcome = if let Some(lost) = lost {
            let garbage = state.queue_garbage("", "");
            if let Some(g) = state.garbage.get_mut(&garbage) {
                g.storage_key = Some(lost.to_owned());
            }
            state.blobs.insert(blob.digest.clone(), blob.clone());
            BlobCommit::Created
        } else if state.blobs.contains_key(&blob.digest) {
            BlobCommit::Deduplicated {
                garbage_id: state.queue_garbage(id, &session.store_state),
            }
        } else {
            state.blobs.insert(blob.digest.clone(), blob.clone());
            BlobCommit::Created
        };
        state.link(session.repository.as_str(), &blob.digest, now, announce);
        Ok(outcome)
    }

    async fn cancel_upload(&self, id: &str, _now: i64) -> MetadataResult<Option<Garbage>> {
        let mut state = self.state();
        let Some(upload) = state.uploads.remove(id) else {
            return Ok(None);
        };
        let garbage_id = state.queue_garbage(id, &upload.session.store_state);
        Ok(state.garbage.get(&garbage_id).cloned())
    }

    async fn expire_uploads(&self, cutoff: i64, limit: u32, _now: i64) -> MetadataResult<u64> {
        let mut state = self.state();
        let mut expired: Vec<(i64, String)> = state
            .uploads
            .values()
            .filter(|u| u.session.updated_at < cutoff)
            .map(|u| (u.session.updated_at, u.session.id.clone()))
            .collect();
        expired.sort();
        expired.truncate(limit as usize);
        for (_, id) in &expired {
            if let Some(upload) = state.uploads.remove(id) {
                state.queue_garbage(id, &upload.session.store_state);
            }
        }
        Ok(expired.len() as u64)
    }

    async fn expired_upload_count(&self, cutoff: i64) -> MetadataResult<u64> {
        Ok(self
            .state()
            .uploads
            .values()
            .filter(|u| u.session.updated_at < cutoff)
            .count() as u64)
    }

    async fn garbage(&self, limit: u32) -> MetadataResult<Vec<Garbage>> {
        Ok(self
            .state()
            .garbage
            .values()
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn forget_garbage(&self, id: i64) -> MetadataResult<()> {
        self.state().garbage.remove(&id);
        Ok(())
    }

    async fn stored_blob(&self, digest: &Digest) -> MetadataResult<Option<BlobRecord>> {
        Ok(self.state().blobs.get(digest).cloned())
    }

    async fn list_blobs(
        &self,
        repository: Option<&RepositoryName>,
        after: Option<&Digest>,
        limit: u32,
    ) -> MetadataResult<Vec<BlobRecord>> {
        let state = self.state();
        let mut blobs: Vec<&BlobRecord> = match repository {
            None => state.blobs.values().collect(),
            Some(r) => state
                .repositories
                .get(r.as_str())
                .map(|repo| {
                    repo.blobs
                        .keys()
                        .filter_map(|d| state.blobs.get(d))
                        .collect()
                })
                .unwrap_or_default(),
        };
        blobs.sort_by(|a, b| a.digest.as_str().cmp(b.digest.as_str()));
        Ok(blobs
            .into_iter()
            .filter(|b| after.is_none_or(|a| b.digest.as_str() > a.as_str()))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn blob_totals(&self, repository: Option<&RepositoryName>) -> MetadataResult<(u64, u64)> {
        let blobs = self.list_blobs(repository, None, u32::MAX).await?;
        Ok((blobs.len() as u64, blobs.iter().map(|b| b.size).sum()))
    }

    async fn dangling_references(
        &self,
        repository: Option<&RepositoryName>,
        limit: u32,
    ) -> MetadataResult<Vec<DanglingReference>> {
        let state = self.state();
        let mut found = Vec::new();
        for (name, repo) in &state.repositories {
            if repository.is_some_and(|r| r.as_str() != name) {
                continue;
            }
            let Ok(repository) = RepositoryName::parse(name) else {
                continue;
            };
            for (digest, stored) in &repo.manifests {
                let record = &stored.record;
                let Ok(parsed) = ParsedManifest::parse(Some(&record.media_type), &record.content)
                else {
                    continue;
                };
                for blob in &parsed.blobs {
                    let kind = if !state.blobs.contains_key(blob) {
                        DanglingKind::MissingBlob
                    } else if !repo.blobs.contains_key(blob) {
                        DanglingKind::UnlinkedBlob
                    } else {
                        continue;
                    };
                    found.push(DanglingReference {
                        repository: repository.clone(),
                        manifest: digest.clone(),
                        target: blob.clone(),
                        kind,
                    });
                }
                for child in parsed
                    .children
                    .iter()
                    .filter(|c| !repo.manifests.contains_key(*c))
                {
                    found.push(DanglingReference {
                        repository: repository.clone(),
                        manifest: digest.clone(),
                        target: child.clone(),
                        kind: DanglingKind::MissingManifest,
                    });
                }
            }
        }
        found.truncate(limit as usize);
        Ok(found)
    }

    async fn forget_blob(&self, digest: &Digest, _now: i64) -> MetadataResult<Option<Garbage>> {
        let mut state = self.state();
        for repo in state.repositories.values_mut() {
            repo.blobs.remove(digest);
        }
        let Some(blob) = state.blobs.remove(digest) else {
            return Ok(None);
        };
        let id = state.queue_garbage("", "");
        let garbage = state.garbage.get_mut(&id).map(|g| {
            g.storage_key = Some(blob.storage_key.clone());
            g.clone()
        });
        Ok(garbage)
    }

    async fn put_manifest(&self, m: NewManifest<'_>) -> MetadataResult<PutManifestOutcome> {
        let mut state = self.state();
        let new_repository = !state.repositories.contains_key(m.repository.as_str());
        let refused = state.refused_push(m);
        if let Some(refused) = refused {
            return Ok(refused);
        }
        if new_repository {
            state.ensure_repository(m.repository.as_str(), m.now, m.announce);
        }
        let repo = state
            .repositories
            .entry(m.repository.as_str().to_owned())
            .or_default();
        repo.manifests
            .entry(m.digest.clone())
            .or_insert_with(|| StoredManifest {
                record: ManifestRecord {
                    digest: m.digest.clone(),
                    media_type: m.parsed.media_type.clone(),
                    content: bytes::Bytes::copy_from_slice(m.content),
                    subject: m.parsed.subject.clone(),
                },
                artifact_type: m.parsed.artifact_type.clone(),
                annotations: m.parsed.annotations.clone(),
                blobs: m.parsed.blobs.clone(),
                children: m.parsed.children.clone(),
                created_at: m.now,
            });
        for tag in m.tags {
            let kept = m.immutable.contains(tag) && repo.tags.contains_key(tag.as_str());
            repo.tags.insert(tag.as_str().to_owned(), m.digest.clone());
            // As in SQL: a set-once tag pushed again keeps the time it was set.
            if !kept {
                repo.tag_pushed.insert(tag.as_str().to_owned(), m.now);
            }
        }
        let push = NewEvent::new(EventAction::Push, m.repository, m.now)
            .by(m.announce.unwrap_or(&EventOrigin::default()))
            .with_digest(m.digest)
            .with_object(&m.parsed.media_type, m.content.len() as u64);
        let events: Vec<NewEvent> = if m.announce.is_none() {
            Vec::new()
        } else if m.tags.is_empty() {
            vec![push]
        } else {
            m.tags
                .iter()
                .map(|tag| NewEvent {
                    id: uuid::Uuid::new_v4().to_string(),
                    ..push.clone().with_tag(tag)
                })
                .collect()
        };
        state.record_events(&events);
        Ok(PutManifestOutcome::Stored)
    }

    async fn manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
    ) -> MetadataResult<Option<ManifestRecord>> {
        let state = self.state();
        let Some(repo) = state.repositories.get(repository.as_str()) else {
            return Ok(None);
        };
        let digest = match reference {
            Reference::Tag(tag) => repo.tags.get(tag.as_str()),
            Reference::Digest(digest) => Some(digest),
        };
        Ok(digest
            .and_then(|d| repo.manifests.get(d))
            .map(|m| m.record.clone()))
    }
    async fn delete_manifest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        immutable: TagGuard<'_>,
        origin: &EventOrigin,
        now: i64,
    ) -> MetadataResult<ManifestDeletion> {
        let mut state = self.state();
        let Some(repo) = state.repositories.get(repository.as_str()) else {
            return Ok(ManifestDeletion::NotFound);
        };
        if !repo.manifests.contains_key(digest) {
            return Ok(ManifestDeletion::NotFound);
        }
        if let Some((name, _)) = repo
            .tags
            .iter()
            .find(|(name, d)| *d == digest && immutable(name))
        {
            let tag = Tag::parse(name).map_err(|e| super::MetadataError::Corrupt(e.to_string()))?;
            return Ok(ManifestDeletion::Protected { tag });
        }
        state.forget_manifest(repository.as_str(), digest, origin, now);
        Ok(ManifestDeletion::Deleted)
    }

    async fn delete_tag(
        &self,
        repository: &RepositoryName,
        tag: &Tag,
        origin: &EventOrigin,
        now: i64,
    ) -> MetadataResult<bool> {
        let mut state = self.state();
        let removed = state
            .repositories
            .get_mut(repository.as_str())
            .and_then(|r| {
                r.tag_pushed.remove(tag.as_str());
                r.tags.remove(tag.as_str())
            });
        let Some(digest) = removed else {
            return Ok(false);
        };
        state.record_events(&[NewEvent::new(EventAction::TagDelete, repository, now)
            .by(origin)
            .with_digest(&digest)
            .with_tag(tag)]);
        Ok(true)
    }

    async fn tags(
        &self,
        repository: &RepositoryName,
        page: Page<'_>,
    ) -> MetadataResult<Option<Vec<String>>> {
        let state = self.state();
        Ok(state.repositories.get(repository.as_str()).map(|r| {
            page_of(r.tags.iter(), page)
                .map(|(k, _)| k.clone())
                .collect()
        }))
    }

    async fn collect_links(&self, cutoff: i64, limit: u32, _now: i64) -> MetadataResult<Collected> {
        let mut state = self.state();
        let mut due: Vec<((String, Digest), i64)> = state
            .link_reviews
            .iter()
            .filter(|(_, queued)| **queued <= cutoff)
            .map(|(k, q)| (k.clone(), *q))
            .collect();
        due.sort_by_key(|(_, queued)| *queued);
        due.truncate(limit as usize);
        let mut collected = Collected::default();
        for ((repository, digest), _) in due {
            state
                .link_reviews
                .remove(&(repository.clone(), digest.clone()));
            collected.reviewed += 1;
            let linked_at = state
                .repositories
                .get(&repository)
                .and_then(|r| r.blobs.get(&digest).copied());
            if linked_at.is_none_or(|t| t > cutoff) || state.referenced(Some(&repository), &digest)
            {
                continue;
            }
            if let Some(repo) = state.repositories.get_mut(&repository) {
                repo.blobs.remove(&digest);
            }
            collected.links += 1;
            collected += state.delete_unreferenced_blob(&digest);
        }
        Ok(collected)
    }

    async fn collect_blobs(&self, cutoff: i64, limit: u32, _now: i64) -> MetadataResult<Collected> {
        let mut state = self.state();
        let mut due: Vec<(Digest, i64)> = state
            .blob_reviews
            .iter()
            .filter(|(_, queued)| **queued <= cutoff)
            .map(|(d, q)| (d.clone(), *q))
            .collect();
        due.sort_by_key(|(_, queued)| *queued);
        due.truncate(limit as usize);
        let mut collected = Collected::default();
        for (digest, _) in due {
            state.blob_reviews.remove(&digest);
            collected.reviewed += 1;
            collected += state.delete_unreferenced_blob(&digest);
        }
        Ok(collected)
    }

    async fn collect_untagged_manifests(
        &self,
        cutoff: i64,
        limit: u32,
        now: i64,
    ) -> MetadataResult<Collected> {
        let mut state = self.state();
        let due: Vec<(String, Digest)> = state
            .repositories
            .iter()
            .flat_map(|(name, repo)| repo.manifests.keys().map(|d| (name.clone(), d.clone())))
            .filter(|(name, digest)| state.untagged(name, digest, cutoff))
            .take(limit as usize)
            .collect();
        let mut collected = Collected::default();
        for (name, digest) in due {
            if state.forget_manifest(&name, &digest, &EventOrigin::default(), now) {
                collected.manifests += 1;
            }
        }
        Ok(collected)
    }

    async fn collect_preview(
        &self,
        cutoff: i64,
        untagged_cutoff: Option<i64>,
    ) -> MetadataResult<Collected> {
        let state = self.state();
        let mut preview = Collected::default();
        let mut doomed: BTreeSet<(String, Digest)> = BTreeSet::new();
        let mut candidates: BTreeSet<Digest> = BTreeSet::new();
        for ((repository, digest), queued) in &state.link_reviews {
            if *queued > cutoff {
                continue;
            }
            preview.reviewed += 1;
            let linked_at = state
                .repositories
                .get(repository)
                .and_then(|r| r.blobs.get(digest).copied());
            if linked_at.is_some_and(|t| t <= cutoff) && !state.referenced(Some(repository), digest)
            {
                doomed.insert((repository.clone(), digest.clone()));
                candidates.insert(digest.clone());
            }
        }
        for (digest, queued) in &state.blob_reviews {
            if *queued <= cutoff {
                preview.reviewed += 1;
                candidates.insert(digest.clone());
            }
        }
        preview.links = doomed.len() as u64;
        for digest in candidates {
            let kept = state.repositories.iter().any(|(name, repo)| {
                repo.blobs.contains_key(&digest)
                    && !doomed.contains(&(name.clone(), digest.clone()))
            });
            if kept || state.referenced(None, &digest) {
                continue;
            }
            if let Some(blob) = state.blobs.get(&digest) {
                preview.blobs += 1;
                preview.bytes += blob.size;
            }
        }
        if let Some(untagged_cutoff) = untagged_cutoff {
            preview.manifests = state
                .repositories
                .iter()
                .flat_map(|(name, repo)| repo.manifests.keys().map(move |d| (name, d)))
                .filter(|(name, digest)| state.untagged(name, digest, untagged_cutoff))
                .count() as u64;
        }
        Ok(preview)
    }

    async fn referrers(
        &self,
        repository: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
        page: Page<'_>,
    ) -> MetadataResult<Vec<ReferrerRecord>> {
        let state = self.state();
        let Some(repo) = state.repositories.get(repository.as_str()) else {
            return Ok(Vec::new());
        };
        let after = page.after.unwrap_or("");
        Ok(repo
            .manifests
            .values()
            .filter(|m| m.record.subject.as_ref() == Some(subject))
            .filter(|m| artifact_type.is_none_or(|t| m.artifact_type.as_deref() == Some(t)))
            .filter(|m| m.record.digest.as_str() > after)
            .take(page.limit.map(|l| l as usize).unwrap_or(usize::MAX))
            .map(|m| ReferrerRecord {
                digest: m.record.digest.clone(),
                media_type: m.record.media_type.clone(),
                size: m.record.content.len() as u64,
                artifact_type: m.artifact_type.clone(),
                annotations: m.annotations.clone(),
            })
            .collect())
    }

    async fn search_repositories(
        &self,
        needle: &str,
        page: Page<'_>,
    ) -> MetadataResult<Vec<String>> {
        let state = self.state();
        let matching = state
            .repositories
            .iter()
            .filter(|(name, _)| name.contains(needle));
        Ok(page_of(matching, page).map(|(k, _)| k.clone()).collect())
    }

    async fn recent_tags(
        &self,
        repository: &RepositoryName,
        before: Option<PushedBefore<'_>>,
        limit: u32,
    ) -> MetadataResult<Option<Vec<ListedManifest>>> {
        let state = self.state();
        let Some(repo) = state.repositories.get(repository.as_str()) else {
            return Ok(None);
        };
        let mut listed: Vec<ListedManifest> = repo
            .tags
            .iter()
            .filter_map(|(tag, digest)| {
                let pushed_at = repo.tag_pushed.get(tag).copied().unwrap_or(0);
                let after_cursor = before.is_none_or(|b| {
                    pushed_at < b.pushed_at || (pushed_at == b.pushed_at && tag.as_str() < b.tag)
                });
                let manifest = repo.manifests.get(digest)?;
                after_cursor.then(|| ListedManifest {
                    tag: Some(tag.clone()),
                    pushed_at,
                    manifest: manifest.record.clone(),
                })
            })
            .collect();
        listed.sort_by(|a, b| (b.pushed_at, &b.tag).cmp(&(a.pushed_at, &a.tag)));
        listed.truncate(limit as usize);
        Ok(Some(listed))
    }

    async fn untagged_manifests(
        &self,
        repository: &RepositoryName,
        limit: u32,
    ) -> MetadataResult<Vec<ListedManifest>> {
        let state = self.state();
        let Some(repo) = state.repositories.get(repository.as_str()) else {
            return Ok(Vec::new());
        };
        let tagged: BTreeSet<&Digest> = repo.tags.values().collect();
        let mut listed: Vec<ListedManifest> = repo
            .manifests
            .values()
            .filter(|m| !tagged.contains(&m.record.digest))
            .map(|m| ListedManifest {
                tag: None,
                pushed_at: m.created_at,
                manifest: m.record.clone(),
            })
            .collect();
        listed.sort_by(|a, b| {
            (b.pushed_at, &a.manifest.digest).cmp(&(a.pushed_at, &b.manifest.digest))
        });
        listed.truncate(limit as usize);
        Ok(listed)
    }

    async fn manifests_among(
        &self,
        repository: &RepositoryName,
        digests: &[Digest],
    ) -> MetadataResult<Vec<ManifestRecord>> {
        let state = self.state();
        let Some(repo) = state.repositories.get(repository.as_str()) else {
            return Ok(Vec::new());
        };
        Ok(digests
            .iter()
            .filter_map(|d| repo.manifests.get(d).map(|m| m.record.clone()))
            .collect())
    }

    async fn tags_naming(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        limit: u32,
    ) -> MetadataResult<Vec<String>> {
        let state = self.state();
        Ok(state
            .repositories
            .get(repository.as_str())
            .map(|repo| {
                repo.tags
                    .iter()
                    .filter(|(_, d)| *d == digest)
                    .map(|(t, _)| t.clone())
                    .take(limit as usize)
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn mirror_tag_checked(
        &self,
        repository: &RepositoryName,
        tag: &Tag,
    ) -> MetadataResult<Option<i64>> {
        let key = (repository.as_str().to_owned(), tag.as_str().to_owned());
        Ok(self.state().mirror_tag_checks.get(&key).copied())
    }

    async fn record_mirror_tag_check(
        &self,
        repository: &RepositoryName,
        tag: &Tag,
        at: i64,
    ) -> MetadataResult<()> {
        let key = (repository.as_str().to_owned(), tag.as_str().to_owned());
        self.state().mirror_tag_checks.insert(key, at);
        Ok(())
    }

    async fn claim_mirror_fetch(
        &self,
        digest: &Digest,
        claim: &MirrorFetchClaim,
        now: i64,
    ) -> MetadataResult<bool> {
        let mut state = self.state();
        let free = match state.mirror_fetches.get(digest) {
            Some(held) => held.owner == claim.owner || held.lease_until < now,
            None => true,
        };
        if free {
            state.mirror_fetches.insert(digest.clone(), claim.clone());
        }
        Ok(free)
    }

    async fn mirror_fetch_claim(
        &self,
        digest: &Digest,
    ) -> MetadataResult<Option<MirrorFetchClaim>> {
        Ok(self.state().mirror_fetches.get(digest).cloned())
    }

    async fn release_mirror_fetch(&self, digest: &Digest, owner: &str) -> MetadataResult<()> {
        let mut state = self.state();
        if state
            .mirror_fetches
            .get(digest)
            .is_some_and(|held| held.owner == owner)
        {
            state.mirror_fetches.remove(digest);
        }
        Ok(())
    }

    async fn keep_mirrored_manifest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        upstream: &str,
        at: i64,
    ) -> MetadataResult<()> {
        let key = (repository.as_str().to_owned(), digest.clone());
        let mut state = self.state();
        match state.mirror_pulls.get_mut(&key) {
            Some(kept) if kept.1 < at => *kept = (upstream.to_owned(), at),
            Some(_) => {}
            None => {
                state.mirror_pulls.insert(key, (upstream.to_owned(), at));
            }
        }
        Ok(())
    }

    async fn disown_mirrored_manifest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> MetadataResult<()> {
        self.state()
            .mirror_pulls
            .remove(&(repository.as_str().to_owned(), digest.clone()));
        Ok(())
    }

    async fn record_mirror_pulls(&self, pulls: &[MirrorPull]) -> MetadataResult<()> {
        let mut state = self.state();
        for pull in pulls {
            let key = (pull.repository.clone(), pull.digest.clone());
            if let Some((_, at)) = state.mirror_pulls.get_mut(&key) {
                *at = (*at).max(pull.at);
            }
        }
        Ok(())
    }

    async fn evict_unpulled_manifests(
        &self,
        upstream: &str,
        cutoff: i64,
        limit: u32,
        now: i64,
        apply: bool,
    ) -> MetadataResult<u64> {
        let mut state = self.state();
        let state = &mut *state;
        let mut due: Vec<(i64, String, Digest)> = state
            .mirror_pulls
            .iter()
            .filter(|((repository, digest), (from, at))| {
                from == upstream
                    && *at <= cutoff
                    && state.repositories.get(repository).is_some_and(|r| {
                        r.manifests.contains_key(digest)
                            && !r.manifests.values().any(|p| p.children.contains(digest))
                    })
            })
            .map(|((repository, digest), (_, at))| (*at, repository.clone(), digest.clone()))
            .collect();
        due.sort();
        due.truncate(limit as usize);
        if !apply {
            return Ok(due.len() as u64);
        }
        let mut evicted = 0;
        for (_, repository, digest) in due {
            if state.forget_manifest(&repository, &digest, &EventOrigin::default(), now) {
                evicted += 1;
            }
        }
        // Rows of this upstream's whose manifest went another way (a crash between keeping
        // and storing it).
        state
            .mirror_pulls
            .retain(|(repository, digest), (from, at)| {
                from != upstream
                    || *at > cutoff
                    || state
                        .repositories
                        .get(repository)
                        .is_some_and(|r| r.manifests.contains_key(digest))
            });
        Ok(evicted)
    }

    fn announces(&self, action: EventAction) -> bool {
        self.state().subscriptions.any_wants(action)
    }

    async fn announce(&self, events: &[NewEvent]) -> MetadataResult<()> {
        self.state().record_events(events);
        Ok(())
    }

    async fn claim_event_endpoint(
        &self,
        endpoint: &str,
        owner: &str,
        lease_until: i64,
        now: i64,
    ) -> MetadataResult<EndpointClaim> {
        let mut state = self.state();
        let claim = state
            .event_endpoints
            .entry(endpoint.to_owned())
            .or_insert_with(|| (String::new(), 0));
        if claim.0 != owner && claim.1 >= now {
            return Ok(EndpointClaim::HeldElsewhere {
                until: Some(claim.1),
            });
        }
        *claim = (owner.to_owned(), lease_until);
        Ok(EndpointClaim::Held)
    }

    async fn due_events(
        &self,
        endpoint: &str,
        now: i64,
        limit: u32,
    ) -> MetadataResult<Vec<OutboxEvent>> {
        let state = self.state();
        let mut waiting: BTreeSet<&str> = BTreeSet::new();
        let mut due = Vec::new();
        for row in state.outbox.values() {
            if row.endpoint != endpoint || row.state != DeliveryState::Pending {
                continue;
            }
            if row.next_attempt_at > now {
                waiting.insert(&row.event.repository);
            } else if !waiting.contains(row.event.repository.as_str()) {
                due.push(row.clone());
                if due.len() >= limit as usize {
                    break;
                }
            }
        }
        Ok(due)
    }

    async fn start_event_attempts(&self, seqs: &[i64]) -> MetadataResult<()> {
        let mut state = self.state();
        for seq in seqs {
            if let Some(row) = state
                .outbox
                .get_mut(seq)
                .filter(|r| r.state == DeliveryState::Pending)
            {
                row.attempts += 1;
            }
        }
        Ok(())
    }

    async fn settle_events(
        &self,
        outcomes: &[(i64, DeliveryOutcome)],
        now: i64,
    ) -> MetadataResult<()> {
        let mut state = self.state();
        for (seq, outcome) in outcomes {
            let Some(row) = state
                .outbox
                .get_mut(seq)
                .filter(|r| r.state == DeliveryState::Pending)
            else {
                continue;
            };
            match outcome {
                DeliveryOutcome::Delivered => {
                    row.state = DeliveryState::Delivered;
                    row.settled_at = Some(now);
                    row.last_error = None;
                }
                DeliveryOutcome::Retry {
                    next_attempt_at,
                    error,
                } => {
                    row.next_attempt_at = *next_attempt_at;
                    row.last_error = Some(error.clone());
                }
                DeliveryOutcome::Dead { error } => {
                    row.state = DeliveryState::Dead;
                    row.settled_at = Some(now);
                    row.last_error = Some(error.clone());
                }
                DeliveryOutcome::Unsent => row.attempts = row.attempts.saturating_sub(1),
            }
        }
        Ok(())
    }

    async fn event_backlog(&self, with_delivered: bool) -> MetadataResult<Vec<EndpointBacklog>> {
        let state = self.state();
        let mut backlog: BTreeMap<&str, EndpointBacklog> = BTreeMap::new();
        for row in state.outbox.values() {
            if !with_delivered && row.state == DeliveryState::Delivered {
                continue;
            }
            let entry = backlog
                .entry(&row.endpoint)
                .or_insert_with(|| EndpointBacklog {
                    endpoint: row.endpoint.clone(),
                    ..EndpointBacklog::default()
                });
            match row.state {
                DeliveryState::Pending => {
                    entry.pending += 1;
                    entry.oldest_pending_at = Some(
                        entry
                            .oldest_pending_at
                            .map_or(row.event.at, |at| at.min(row.event.at)),
                    );
                }
                DeliveryState::Delivered => entry.delivered += 1,
                DeliveryState::Dead => entry.dead += 1,
            }
        }
        Ok(backlog.into_values().collect())
    }

    async fn outbox_events(&self, query: OutboxQuery<'_>) -> MetadataResult<Vec<OutboxEvent>> {
        let state = self.state();
        Ok(state
            .outbox
            .range(query.after.saturating_add(1)..)
            .map(|(_, row)| row)
            .filter(|row| query.endpoint.is_none_or(|e| e == row.endpoint))
            .filter(|row| query.state.is_none_or(|s| s == row.state))
            .take(query.limit as usize)
            .cloned()
            .collect())
    }

    async fn replay_events(
        &self,
        endpoint: &str,
        from: i64,
        to: i64,
        now: i64,
    ) -> MetadataResult<u64> {
        let mut state = self.state();
        let mut replayed = 0;
        for (_, row) in state.outbox.range_mut(from..=to.max(from)) {
            if row.endpoint == endpoint && row.state != DeliveryState::Pending {
                row.state = DeliveryState::Pending;
                row.attempts = 0;
                row.next_attempt_at = now;
                row.last_error = None;
                row.settled_at = None;
                replayed += 1;
            }
        }
        Ok(replayed)
    }

    async fn prune_events(
        &self,
        delivered_before: i64,
        dead_before: i64,
        limit: u32,
    ) -> MetadataResult<u64> {
        let mut state = self.state();
        let due: Vec<i64> = state
            .outbox
            .values()
            .filter(|row| match (row.state, row.settled_at) {
                (DeliveryState::Delivered, Some(at)) => at < delivered_before,
                (DeliveryState::Dead, Some(at)) => at < dead_before,
                _ => false,
            })
            .take(limit as usize)
            .map(|row| row.seq)
            .collect();
        for seq in &due {
            state.outbox.remove(seq);
        }
        Ok(due.len() as u64)
    }
}
