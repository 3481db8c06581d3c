//! A client as real ones behave: it pushes and pulls through the registry's API, retries what
//! failed (resuming an upload from where the registry says it stands, pushing a blob again when
//! a manifest names one the registry lacks), and writes down what the registry acknowledged,
//! so that the checks afterwards know what must be there.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;

use berth::http::ApiError;
use berth::oci::{Digest, DigestAlgorithm, Reference, RepositoryName};
use berth::registry::uploads::{BodyStream, ChunkSpec, UploadId};
use berth::{Registry, RegistryError};

use crate::world::World;

/// How often a client tries one step before it gives up (and the case fails).
const ATTEMPTS: usize = 20;

pub const IMAGE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const IMAGE_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A blob's bytes and digest.
#[derive(Clone, Debug)]
pub struct Content {
    pub bytes: Bytes,
    pub digest: Digest,
}

impl Content {
    pub fn new(bytes: Vec<u8>) -> Content {
        Content {
            digest: DigestAlgorithm::Sha256.digest(&bytes),
            bytes: Bytes::from(bytes),
        }
    }

    /// `len` bytes that only `seed` makes.
    pub fn random(len: usize, seed: u64) -> Content {
        let mut rng = crate::faulty::Rng::new(seed);
        let mut bytes = Vec::with_capacity(len + 8);
        while bytes.len() < len {
            bytes.extend_from_slice(&rng.next().to_le_bytes());
        }
        bytes.truncate(len);
        Content::new(bytes)
    }
}

/// A manifest (image, index or artifact) and what it references.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub media_type: &'static str,
    pub content: Content,
    pub blobs: Vec<Content>,
    pub children: Vec<Manifest>,
}

fn descriptor(media_type: &str, content: &Content) -> serde_json::Value {
    serde_json::json!({
        "mediaType": media_type,
        "digest": content.digest.as_str(),
        "size": content.bytes.len(),
    })
}

impl Manifest {
    /// An image: a config and layers of these sizes, made from `seed`; with `subject`, an
    /// artifact that refers to that manifest.
    pub fn image(seed: u64, layer_sizes: &[usize], subject: Option<&Manifest>) -> Manifest {
        let layers: Vec<Content> = layer_sizes
            .iter()
            .enumerate()
            .map(|(i, size)| Content::random(*size, seed * 1000 + i as u64))
            .collect();
        Manifest::build(Manifest::config(seed), layers, subject)
    }

    /// An image of the config made from `seed` and these layers.
    pub fn with_config(seed: u64, layers: Vec<Content>) -> Manifest {
        Manifest::build(Manifest::config(seed), layers, None)
    }

    fn config(seed: u64) -> Content {
        Content::new(
            format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":{seed}}}").into_bytes(),
        )
    }

    fn build(config: Content, layers: Vec<Content>, subject: Option<&Manifest>) -> Manifest {
        let mut json = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": IMAGE_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": layers
                .iter()
                .map(|l| descriptor("application/vnd.oci.image.layer.v1.tar", l))
                .collect::<Vec<_>>(),
        });
        if let Some(subject) = subject {
            json["subject"] = descriptor(subject.media_type, &subject.content);
            json["artifactType"] = "application/vnd.example.signature".into();
        }
        let mut blobs = vec![config];
        blobs.extend(layers);
        Manifest {
            media_type: IMAGE_MANIFEST,
            content: Content::new(serde_json::to_vec(&json).expect("JSON")),
            blobs,
            children: Vec::new(),
        }
    }

    /// An index of `children`.
    pub fn index(children: Vec<Manifest>) -> Manifest {
        let json = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": IMAGE_INDEX,
            "manifests": children
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let mut d = descriptor(c.media_type, &c.content);
                    d["platform"] = serde_json::json!({
                        "architecture": if i == 0 { "amd64" } else { "arm64" },
                        "os": "linux",
                    });
                    d
                })
                .collect::<Vec<_>>(),
        });
        Manifest {
            media_type: IMAGE_INDEX,
            content: Content::new(serde_json::to_vec(&json).expect("JSON")),
            blobs: Vec::new(),
            children,
        }
    }

    pub fn digest(&self) -> &Digest {
        &self.content.digest
    }
}

/// What the registry acknowledged: what must be there afterwards.
#[derive(Default, Debug)]
pub struct Ledger {
    /// Manifests answered 201, by repository and digest, and whether a delete of them was
    /// answered since.
    pub manifests: BTreeMap<(String, Digest), (Manifest, bool)>,
    /// Every manifest a push was attempted of (answered or not), to delete them all at the end.
    pub attempted: BTreeSet<(String, Digest)>,
    /// Blob links the client removed (`DELETE` of a blob): manifests of that repository no
    /// longer pull it.
    pub unlinked: BTreeSet<(String, Digest)>,
    /// Every blob's bytes by digest.
    pub contents: HashMap<Digest, Bytes>,
}

/// One client of one world.
pub struct Client {
    pub world: Arc<World>,
    pub ledger: Mutex<Ledger>,
    /// Answers no client should get after a transient fault (I4).
    pub complaints: Mutex<Vec<String>>,
    /// The last error answered, for the report of a step that never succeeded.
    last_error: Mutex<String>,
    /// Whether a collector runs beside this client, so that a blob it pushed may be collected
    /// before its manifest names it (`MANIFEST_BLOB_UNKNOWN` is then expected).
    pub collector_beside: bool,
}

fn body(bytes: Bytes) -> BodyStream {
    futures::stream::iter(
        bytes
            .chunks(16 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    )
    .boxed()
}

/// A body that breaks off after `bytes` (the client's connection drops).
fn broken_body(bytes: Bytes) -> BodyStream {
    futures::stream::iter(vec![
        Ok(bytes),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "the client hung up",
        )),
    ])
    .boxed()
}

fn name(repo: &str) -> RepositoryName {
    RepositoryName::parse(repo).expect("a valid repository name")
}

/// The id of a session the registry just opened.
fn made_id(id: &str) -> UploadId {
    UploadId::parse(id).expect("the registry makes valid upload ids")
}

/// The error as the HTTP layer answers it: what a client sees.
fn answer(e: &RegistryError) -> ApiError {
    ApiError::from(e.clone())
}

/// The upload offset a `Range: 0-<last>` header reports.
fn range_end(e: &RegistryError) -> Option<u64> {
    let answer = answer(e);
    let range = answer.header(&http::header::RANGE)?.to_str().ok()?;
    let last: u64 = range.strip_prefix("0-")?.parse().ok()?;
    // `0-0` is what an empty upload reports too: the caller asks the session then.
    (last > 0).then_some(last + 1)
}

impl Client {
    pub fn new(world: Arc<World>) -> Arc<Client> {
        Arc::new(Client {
            world,
            ledger: Mutex::new(Ledger::default()),
            complaints: Mutex::new(Vec::new()),
            last_error: Mutex::new(String::new()),
            collector_beside: false,
        })
    }

    pub fn with_collector(world: Arc<World>) -> Arc<Client> {
        Arc::new(Client {
            world,
            ledger: Mutex::new(Ledger::default()),
            complaints: Mutex::new(Vec::new()),
            last_error: Mutex::new(String::new()),
            collector_beside: true,
        })
    }

    /// The manifests pushed and not deleted, with their repositories.
    pub fn live_manifests(&self) -> Vec<(String, Manifest)> {
        self.ledger()
            .manifests
            .iter()
            .filter(|(_, (_, deleted))| !deleted)
            .map(|((repo, _), (m, _))| (repo.clone(), m.clone()))
            .collect()
    }

    pub fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn registry(&self) -> Registry {
        self.world.registry().await
    }

    fn complain(&self, what: String) {
        self.complaints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(what);
    }

    /// Checks an error answer against I4: a transient fault answers 503 with `Retry-After`,
    /// or an error the client can resume from; never 500.
    pub fn judge(&self, step: &str, e: &RegistryError) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            format!("{e} (cause: {:?})", e.cause());
        let answer = answer(e);
        let status = answer.status().as_u16();
        let fine = match (status, e.code()) {
            (503, _) => answer.header(&http::header::RETRY_AFTER).is_some(),
            (416, _) => answer.header(&http::header::RANGE).is_some(),
            (404, "BLOB_UPLOAD_UNKNOWN") => true,
            (400, "MANIFEST_BLOB_UNKNOWN") => self.collector_beside,
            _ => false,
        };
        if !fine {
            self.complain(format!(
                "{step}: answered {status} {} {:?} (cause: {:?})",
                e.code(),
                e.entries().first().map(|entry| entry.message.clone()),
                e.cause()
            ));
        }
    }

    fn gave_up(&self, step: &str) {
        let last = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.complain(format!(
            "{step}: still failing after {ATTEMPTS} attempts; last: {last}"
        ));
    }

    fn remember(&self, content: &Content) {
        self.ledger()
            .contents
            .insert(content.digest.clone(), content.bytes.clone());
    }

    /// Whether the blob is in the repository (`HEAD`); `false` when that cannot be known.
    pub async fn has_blob(&self, repo: &str, content: &Content) -> bool {
        match self
            .registry()
            .await
            .blob(&name(repo), &content.digest)
            .await
        {
            Ok(_) => true,
            Err(e) if answer(&e).status().as_u16() == 404 => false,
            Err(e) => {
                self.judge("HEAD blob", &e);
                false
            }
        }
    }

    /// `POST ?digest=` with the whole blob, again until answered 201.
    pub async fn push_monolithic(&self, repo: &str, content: &Content) {
        self.remember(content);
        for _ in 0..ATTEMPTS {
            let registry = self.registry().await;
            let spec = ChunkSpec {
                start: None,
                length: Some(content.bytes.len() as u64),
            };
            match registry
                .upload_blob(
                    &name(repo),
                    &content.digest,
                    spec,
                    &mut body(content.bytes.clone()),
                )
                .await
            {
                Ok(_) => return,
                Err(e) => self.judge("monolithic push", &e),
            }
        }
        self.gave_up("monolithic push");
    }

    /// `POST`, `PATCH`es of `chunk` bytes and a `PUT` with the last one. With `hang_up`, the
    /// first `PATCH`'s connection drops half-way and the client resumes from the offset the
    /// registry reports. After an error, the client asks where the upload stands and goes on
    /// from there, or starts over if the session is gone.
    pub async fn push_chunked(&self, repo: &str, content: &Content, chunk: usize, hang_up: bool) {
        self.remember(content);
        let repository = name(repo);
        let len = content.bytes.len() as u64;
        let mut hang_up = hang_up;
        let mut attempts = 0;
        'session: while attempts < ATTEMPTS {
            attempts += 1;
            let registry = self.registry().await;
            let id = match registry
                .start_upload(&repository, DigestAlgorithm::Sha256)
                .await
            {
                Ok(session) => made_id(&session.id),
                Err(e) => {
                    self.judge("start upload", &e);
                    continue;
                }
            };
            let mut offset = 0u64;
            let mut stuck = 0;
            loop {
                if stuck >= ATTEMPTS {
                    continue 'session;
                }
                let registry = self.registry().await;
                let end = (offset + chunk as u64).min(len);
                let bytes = content.bytes.slice(offset as usize..end as usize);
                let spec = ChunkSpec {
                    start: Some(offset),
                    length: Some(end - offset),
                };
                let failed = if end == len {
                    match registry
                        .finish_upload(&repository, &id, &content.digest, spec, &mut body(bytes))
                        .await
                    {
                        Ok(_) => return,
                        Err(e) => e,
                    }
                } else if hang_up {
                    hang_up = false;
                    let half = bytes.slice(..bytes.len() / 2);
                    let spec = ChunkSpec {
                        start: Some(offset),
                        length: None,
                    };
                    // The client broke it: the answer is the client's own doing.
                    let _ = registry
                        .append_upload(&repository, &id, spec, &mut broken_body(half))
                        .await;
                    match self.upload_offset(repo, &id).await {
                        Some(at) => offset = at,
                        None => continue 'session,
                    }
                    continue;
                } else {
                    match registry
                        .append_upload(&repository, &id, spec, &mut body(bytes))
                        .await
                    {
                        Ok(session) => {
                            offset = session.offset;
                            stuck = 0;
                            continue;
                        }
                        Err(e) => e,
                    }
                };
                self.judge("upload chunk", &failed);
                stuck += 1;
                if failed.code() == "BLOB_UPLOAD_UNKNOWN" {
                    // The session ended: maybe by completing (a lost reply), else start over.
                    if self.has_blob(repo, content).await {
                        return;
                    }
                    continue 'session;
                }
                offset = match range_end(&failed) {
                    Some(at) => at,
                    None => match self.upload_offset(repo, &id).await {
                        Some(at) => at,
                        None => {
                            if self.has_blob(repo, content).await {
                                return;
                            }
                            continue 'session;
                        }
                    },
                };
            }
        }
        self.gave_up("chunked push");
    }

    /// Where an upload stands (`GET` on it), asked until answered; `None` if it is gone.
    async fn upload_offset(&self, repo: &str, id: &UploadId) -> Option<u64> {
        for _ in 0..ATTEMPTS {
            match self.registry().await.upload_session(&name(repo), id).await {
                Ok(session) => return Some(session.offset),
                Err(e) if e.code() == "BLOB_UPLOAD_UNKNOWN" => return None,
                Err(e) => self.judge("upload status", &e),
            }
        }
        self.gave_up("upload status");
        None
    }

    /// Pushes a blob unless the repository has it (as docker does: `HEAD` first).
    pub async fn ensure_blob(&self, repo: &str, content: &Content) {
        if !self.has_blob(repo, content).await {
            self.push_monolithic(repo, content).await;
        }
    }

    /// Mounts a blob from `from` (or from anywhere); pushes it when the mount is refused.
    pub async fn mount(&self, repo: &str, content: &Content, from: Option<&str>) {
        self.remember(content);
        let from = from.map(name);
        for _ in 0..ATTEMPTS {
            match self
                .registry()
                .await
                .mount_blob(&name(repo), &content.digest, from.as_ref())
                .await
            {
                Ok(Some(_)) => return,
                Ok(None) => return self.push_monolithic(repo, content).await,
                Err(e) => self.judge("mount", &e),
            }
        }
        self.gave_up("mount");
    }

    /// Pushes a manifest to `reference` (a tag, or its digest), after its blobs and children;
    /// a blob or child the registry reports missing is pushed again.
    pub async fn push_manifest(&self, repo: &str, reference: &str, manifest: &Manifest) {
        for blob in &manifest.blobs {
            self.remember(blob);
        }
        let key = (repo.to_owned(), manifest.digest().clone());
        self.ledger().attempted.insert(key.clone());
        let reference = Reference::parse(reference).expect("a valid reference");
        for _ in 0..ATTEMPTS {
            let registry = self.registry().await;
            match registry
                .put_manifest(
                    &name(repo),
                    &reference,
                    Some(manifest.media_type),
                    &manifest.content.bytes,
                )
                .await
            {
                Ok(_) => {
                    self.ledger()
                        .manifests
                        .insert(key, (manifest.clone(), false));
                    return;
                }
                Err(e) if e.code() == "MANIFEST_BLOB_UNKNOWN" => {
                    self.judge("manifest push", &e);
                    for blob in &manifest.blobs {
                        self.ensure_blob(repo, blob).await;
                    }
                    for child in &manifest.children {
                        Box::pin(self.push_manifest(repo, child.digest().as_str(), child)).await;
                    }
                }
                Err(e) => self.judge("manifest push", &e),
            }
        }
        self.gave_up("manifest push");
    }

    /// Pushes an image's blobs (monolithic) and then its manifest to `tag`.
    pub async fn push_image(&self, repo: &str, tag: &str, manifest: &Manifest) {
        for child in &manifest.children {
            Box::pin(self.push_image(repo, child.digest().as_str(), child)).await;
        }
        for blob in &manifest.blobs {
            self.push_monolithic(repo, blob).await;
        }
        self.push_manifest(repo, tag, manifest).await;
    }

    /// Deletes a manifest by digest; a retry answered 404 means the first delete landed.
    pub async fn delete_manifest(&self, repo: &str, digest: &Digest) {
        for attempt in 0..ATTEMPTS {
            match self
                .registry()
                .await
                .delete_manifest(&name(repo), &Reference::Digest(digest.clone()))
                .await
            {
                Ok(()) => return self.deleted(repo, digest),
                Err(e) if e.code() == "MANIFEST_UNKNOWN" && attempt > 0 => {
                    return self.deleted(repo, digest);
                }
                Err(e) => self.judge("manifest delete", &e),
            }
        }
        self.gave_up("manifest delete");
    }

    fn deleted(&self, repo: &str, digest: &Digest) {
        if let Some(entry) = self
            .ledger()
            .manifests
            .get_mut(&(repo.to_owned(), digest.clone()))
        {
            entry.1 = true;
        }
    }

    /// Deletes a tag; a retry answered 404 means the first delete landed.
    pub async fn delete_tag(&self, repo: &str, tag: &str) {
        let reference = Reference::parse(tag).expect("a valid tag");
        for attempt in 0..ATTEMPTS {
            match self
                .registry()
                .await
                .delete_manifest(&name(repo), &reference)
                .await
            {
                Ok(()) => return,
                Err(e) if e.code() == "MANIFEST_UNKNOWN" && attempt > 0 => return,
                Err(e) => self.judge("tag delete", &e),
            }
        }
        self.gave_up("tag delete");
    }

    /// Unlinks a blob from a repository (`DELETE` of a blob).
    pub async fn delete_blob(&self, repo: &str, content: &Content) {
        self.ledger()
            .unlinked
            .insert((repo.to_owned(), content.digest.clone()));
        for attempt in 0..ATTEMPTS {
            match self
                .registry()
                .await
                .delete_blob(&name(repo), &content.digest)
                .await
            {
                Ok(()) => return,
                Err(e) if e.code() == "BLOB_UNKNOWN" && attempt > 0 => return,
                Err(e) => self.judge("blob delete", &e),
            }
        }
        self.gave_up("blob delete");
    }

    /// Opens an upload and sends the first half of `content`: the upload's id and how the
    /// chunk went, or `None` if the upload could not be opened (the error judged).
    async fn half_upload(
        &self,
        repository: &RepositoryName,
        content: &Content,
    ) -> Option<(UploadId, Result<(), RegistryError>)> {
        let registry = self.registry().await;
        let id = match registry
            .start_upload(repository, DigestAlgorithm::Sha256)
            .await
        {
            Ok(s) => made_id(&s.id),
            Err(e) => {
                self.judge("start upload", &e);
                return None;
            }
        };
        let half = content.bytes.slice(..content.bytes.len() / 2);
        let spec = ChunkSpec {
            start: Some(0),
            length: Some(half.len() as u64),
        };
        let appended = registry
            .append_upload(repository, &id, spec, &mut body(half))
            .await
            .map(|_| ());
        Some((id, appended))
    }

    /// Opens an upload, sends part of a blob, and cancels it (`DELETE` of the upload).
    pub async fn cancelled_upload(&self, repo: &str, content: &Content) {
        let repository = name(repo);
        for _ in 0..ATTEMPTS {
            let Some((id, appended)) = self.half_upload(&repository, content).await else {
                continue;
            };
            if let Err(e) = appended {
                self.judge("upload chunk", &e);
            }
            for _ in 0..ATTEMPTS {
                match self.registry().await.cancel_upload(&repository, &id).await {
                    Ok(()) => return,
                    Err(e) if e.code() == "BLOB_UPLOAD_UNKNOWN" => return,
                    Err(e) => self.judge("cancel upload", &e),
                }
            }
        }
        self.gave_up("cancelled upload");
    }

    /// Opens an upload, sends part of a blob and walks away (the session expires later).
    pub async fn abandoned_upload(&self, repo: &str, content: &Content) {
        let repository = name(repo);
        for _ in 0..ATTEMPTS {
            match self.half_upload(&repository, content).await {
                Some((_, Ok(()))) => return,
                Some((_, Err(e))) => self.judge("upload chunk", &e),
                None => {}
            }
        }
        self.gave_up("abandoned upload");
    }

    /// One garbage collection pass, again until it runs through.
    pub async fn collect_garbage(&self) {
        for _ in 0..ATTEMPTS {
            match self.registry().await.collect_garbage(None).await {
                Ok(_) => return,
                Err(e) => self.judge("garbage collection", &e),
            }
        }
        self.gave_up("garbage collection");
    }

    /// One maintenance pass, again until it runs through.
    pub async fn maintenance(&self) {
        for _ in 0..ATTEMPTS {
            match self.registry().await.run_maintenance_once().await {
                Ok(_) => return,
                Err(e) => self.judge("maintenance", &e),
            }
        }
        self.gave_up("maintenance");
    }

    /// `berth scrub --repair`, again until it runs through.
    pub async fn scrub_repair(&self) {
        let options = berth::registry::scrub::ScrubOptions {
            repair: true,
            check_references: true,
            ..Default::default()
        };
        for _ in 0..ATTEMPTS {
            match self.registry().await.scrub(&options, &mut |_| {}).await {
                Ok(_) => return,
                Err(e) => self.judge("scrub", &e),
            }
        }
        self.gave_up("scrub");
    }
}
