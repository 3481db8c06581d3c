//! The writer of one request's bytes into an upload's multipart upload: parts, staged bytes
//! and their promotion, whole objects, and completion (see the module above).

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{MAX_PARTS, MIN_PART_SIZE, Shared, UploadState, error_code, nonce, s3_error};
use crate::storage::local_uploads::{Promotion, PromotionOutcome};
use crate::storage::{
    Durable, PartNumbers, PartRecord, Piece, PieceKind, StagedSource, StorageError, StorageResult,
    UploadWriter,
};

pub(super) struct S3Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) upload_id: String,
    pub(super) key: String,
    /// The state after every piece issued so far.
    pub(super) state: UploadState,
    /// Where staged bytes are read back and promotions recorded.
    pub(super) staged: Option<Arc<dyn StagedSource>>,
    /// Staged bytes the next piece starts with: those no promotion in flight holds.
    pub(super) carried: usize,
    /// The promotion in flight that `carried` counts on to land.
    pub(super) after: Option<Promotion>,
    /// Whole objects this writer created.
    pub(super) written: Vec<String>,
    pub(super) part_numbers: Arc<dyn PartNumbers>,
    pub(super) in_flight: VecDeque<JoinHandle<StorageResult<Durable>>>,
    /// Staged bytes and promotions that wait for the checkpoint recording the bytes to end.
    pub(super) unrecorded: Vec<Unrecorded>,
}

/// What a writer does once the registry has recorded staged bytes ending at `end`.
pub(super) struct Unrecorded {
    end: u64,
    /// Keep a copy of these bytes, starting at this offset.
    hold: Option<(u64, Bytes)>,
    /// Let this promotion record its part.
    promotion: Option<(Promotion, oneshot::Sender<()>)>,
}

enum Destination {
    Part,
    Stage,
    /// Stage the new bytes, so that the request is answered once they are recorded, and write
    /// the staged bytes with them as a part in the background.
    StageAndPromote,
    WholeObject,
}

impl S3Writer {
    async fn ensure_multipart(&mut self) -> StorageResult<String> {
        if let Some(id) = &self.state.multipart {
            return Ok(id.clone());
        }
        let out = self
            .shared
            .client
            .create_multipart_upload()
            .bucket(&self.shared.bucket)
            .key(&self.key)
            .content_type("application/octet-stream")
            .send()
            .await
            .map_err(|e| s3_error("CreateMultipartUpload", e))?;
        let id = out
            .upload_id()
            .ok_or_else(|| StorageError::Backend {
                operation: "CreateMultipartUpload",
                message: "no upload id in the answer".into(),
            })?
            .to_owned();
        self.state.multipart = Some(id.clone());
        Ok(id)
    }

    fn source(&self) -> StorageResult<&Arc<dyn StagedSource>> {
        self.staged.as_ref().ok_or_else(|| {
            StorageError::State(format!(
                "upload {}: staged bytes but no source",
                self.upload_id
            ))
        })
    }

    /// Waits for the promotion `carried` counts on; fails if it did not land, since the bytes
    /// it holds are still staged ahead of the carried ones.
    async fn await_promotion(&mut self) -> StorageResult<()> {
        let Some(promotion) = self.after.take() else {
            return Ok(());
        };
        if promotion.landed().await {
            return Ok(());
        }
        Err(StorageError::Unavailable(format!(
            "a part of upload {} written in the background did not land; retry the request",
            self.upload_id
        )))
    }

    /// The piece's bytes with the carried ones filled in, and the upload offset they start
    /// at. Carried bytes come from this process's copy or else the metadata store; if some
    /// were promoted by another process meanwhile, the piece starts after them.
    async fn fill_carried(&mut self, piece: Piece) -> StorageResult<(u64, Bytes)> {
        let carried = piece.carried;
        let new_start = piece.start_offset();
        let mut buffer = piece.buffer;
        // A part must not be recorded past staged bytes that may stay staged.
        self.await_promotion().await?;
        if carried == 0 {
            return Ok((new_start, buffer.freeze()));
        }
        if carried != self.carried {
            return Err(StorageError::State(format!(
                "{} bytes are carried but the piece reserves {carried}",
                self.carried
            )));
        }
        let want = new_start - carried as u64;
        if self
            .shared
            .local
            .copy_held(&self.upload_id, want, &mut buffer.as_mut_slice()[..carried])
        {
            self.carried = 0;
            return Ok((want, buffer.freeze()));
        }
        let (start, bytes) = self.source()?.fetch().await?;
        let start = if bytes.is_empty() { new_start } else { start };
        if start + bytes.len() as u64 != new_start || start < want {
            return Err(StorageError::Unavailable(format!(
                "upload {}: staged bytes [{start}, {}) changed under the request; retry it",
                self.upload_id,
                start + bytes.len() as u64
            )));
        }
        let skip = (start - want) as usize;
        buffer.as_mut_slice()[skip..carried].copy_from_slice(&bytes);
        self.carried = 0;
        Ok((start, buffer.freeze().slice(skip..)))
    }

    /// Writes the carried bytes, all staged and at least a part's worth, as a part now.
    pub(super) async fn promote_carried(&mut self, offset: u64) -> StorageResult<()> {
        self.await_promotion().await?;
        // Another process may promote some of them meanwhile: then the rest is looked at again.
        for _ in 0..3 {
            let (start, bytes) = self.source()?.fetch().await?;
            let end = start + bytes.len() as u64;
            if bytes.is_empty() || end != offset {
                return Err(StorageError::Busy);
            }
            if bytes.len() < MIN_PART_SIZE {
                self.carried = bytes.len();
                return Ok(());
            }
            let multipart = self.ensure_multipart().await?;
            let number = self.next_part_number().await?;
            let part = self
                .shared
                .upload_part(&self.key, &multipart, number, bytes, start)
                .await?;
            if self.source()?.promote(start, end, &part).await? {
                self.carried = 0;
                return Ok(());
            }
        }
        Err(StorageError::Busy)
    }

    /// Waits for the oldest pieces while more than the allowed number are in flight.
    async fn drain_to_concurrency(&mut self) -> StorageResult<Vec<Durable>> {
        let mut durable = Vec::new();
        while self.in_flight.len() > self.shared.concurrency {
            durable.extend(self.settle().await?);
        }
        Ok(durable)
    }

    async fn next_part_number(&self) -> StorageResult<u32> {
        let number = self.part_numbers.next().await?;
        if number > MAX_PARTS {
            return Err(StorageError::Limit(format!(
                "the upload would need more than {MAX_PARTS} S3 parts; send larger chunks or raise BERTH_S3_PART_SIZE"
            )));
        }
        Ok(number)
    }

    fn ready(durable: Durable) -> JoinHandle<StorageResult<Durable>> {
        tokio::spawn(async move { Ok(durable) })
    }

    /// Stages the piece's new bytes: the registry records them with the session.
    fn stage(&mut self, piece: Piece) -> JoinHandle<StorageResult<Durable>> {
        let start = piece.start_offset();
        let end_offset = piece.end_offset;
        let bytes = piece.buffer.freeze().slice(piece.carried..);
        self.carried += bytes.len();
        self.unrecorded.push(Unrecorded {
            end: end_offset,
            hold: Some((start, bytes.clone())),
            promotion: None,
        });
        Self::ready(Durable {
            end_offset,
            parts: Vec::new(),
            store_state: self.state.encode(),
            staged: Some(bytes),
            consumed_staged: false,
        })
    }

    /// Stages the new bytes of a filled piece whose bytes (from `start`) turned out too few for
    /// a part that is not the last (another process promoted some carried bytes meanwhile):
    /// they all stay staged and are carried by the next piece.
    fn keep_staged(
        &mut self,
        start: u64,
        bytes: Bytes,
        new: Bytes,
        end_offset: u64,
    ) -> JoinHandle<StorageResult<Durable>> {
        self.carried = bytes.len();
        self.unrecorded.push(Unrecorded {
            end: end_offset,
            hold: Some((start, bytes)),
            promotion: None,
        });
        Self::ready(Durable {
            end_offset,
            parts: Vec::new(),
            store_state: self.state.encode(),
            staged: Some(new),
            consumed_staged: false,
        })
    }

    /// Stages the piece's new bytes and uploads the piece, carried bytes included, as a part
    /// in the background; the part is recorded, and the staged bytes it holds dropped, only
    /// after the new bytes are recorded. Until then the staged bytes are the durable copy.
    async fn stage_and_promote(
        &mut self,
        piece: Piece,
    ) -> StorageResult<JoinHandle<StorageResult<Durable>>> {
        let multipart = self.ensure_multipart().await?;
        let new_start = piece.start_offset();
        let end_offset = piece.end_offset;
        let (start, bytes) = self.fill_carried(piece).await?;
        let new = bytes.slice((new_start - start) as usize..);
        if bytes.len() < MIN_PART_SIZE {
            return Ok(self.keep_staged(start, bytes, new, end_offset));
        }
        let number = self.next_part_number().await?;
        let (promotion, outcome) = Promotion::start(start, end_offset);
        let (recorded, on_recorded) = oneshot::channel();
        tokio::spawn(promote(
            Arc::clone(&self.shared),
            Arc::clone(self.source()?),
            self.key.clone(),
            multipart,
            number,
            bytes,
            start,
            on_recorded,
            outcome,
        ));
        self.after = Some(promotion.clone());
        self.unrecorded.push(Unrecorded {
            end: end_offset,
            hold: None,
            promotion: Some((promotion, recorded)),
        });
        Ok(Self::ready(Durable {
            end_offset,
            parts: Vec::new(),
            store_state: self.state.encode(),
            staged: Some(new),
            consumed_staged: false,
        }))
    }
}

/// Uploads a part of staged bytes `[start, start + bytes.len())`; once the checkpoint that
/// stages the last of them is recorded, records the part and drops those staged bytes.
#[allow(clippy::too_many_arguments)]
async fn promote(
    shared: Arc<Shared>,
    source: Arc<dyn StagedSource>,
    key: String,
    multipart: String,
    number: u32,
    bytes: Bytes,
    start: u64,
    on_recorded: oneshot::Receiver<()>,
    outcome: PromotionOutcome,
) {
    let end = start + bytes.len() as u64;
    let landed = async {
        let part = shared
            .upload_part(&key, &multipart, number, bytes, start)
            .await?;
        if on_recorded.await.is_err() {
            // The request lost its checkpoint: the bytes were never staged.
            return Ok(false);
        }
        source.promote(start, end, &part).await
    }
    .await;
    match landed {
        Ok(landed) => {
            tracing::debug!(
                key,
                part = number,
                start,
                end,
                landed,
                "promoted staged bytes"
            );
            outcome.finish(landed);
        }
        Err(e) => {
            tracing::warn!(key, part = number, start, end, error = %e, "staged bytes stay staged: their part did not land");
            outcome.finish(false);
        }
    }
}

#[async_trait]
impl UploadWriter for S3Writer {
    fn carried(&self) -> usize {
        self.carried
    }

    async fn write(&mut self, piece: Piece) -> StorageResult<Vec<Durable>> {
        let total = piece.buffer.len();
        let new = total - piece.carried;
        let destination = match piece.kind {
            PieceKind::Full => Destination::Part,
            PieceKind::Partial if total < MIN_PART_SIZE => Destination::Stage,
            PieceKind::Partial if new < MIN_PART_SIZE && self.staged.is_some() => {
                Destination::StageAndPromote
            }
            PieceKind::Partial => Destination::Part,
            PieceKind::Final if self.state.multipart.is_none() => Destination::WholeObject,
            PieceKind::Final => Destination::Part,
        };
        let end_offset = piece.end_offset;
        let task: JoinHandle<StorageResult<Durable>> = match destination {
            Destination::Stage => self.stage(piece),
            Destination::StageAndPromote => self.stage_and_promote(piece).await?,
            Destination::WholeObject => {
                let consumed_staged = piece.carried > 0;
                let (_, bytes) = self.fill_carried(piece).await?;
                let key = format!("{}.{}", self.key, nonce());
                self.state.object = Some(key.clone());
                self.written.push(key.clone());
                let store_state = self.state.encode();
                let shared = Arc::clone(&self.shared);
                tokio::spawn(async move {
                    if let Err(e) = shared.put_object(&key, bytes).await {
                        // It may have been stored with its answer lost; no checkpoint names
                        // it yet, so it is nobody's.
                        let _ = shared.delete_key(&key).await;
                        return Err(e);
                    }
                    Ok(Durable {
                        end_offset,
                        parts: Vec::new(),
                        store_state,
                        staged: None,
                        consumed_staged,
                    })
                })
            }
            Destination::Part => {
                let multipart = self.ensure_multipart().await?;
                let consumed_staged = piece.carried > 0;
                let last = piece.kind == PieceKind::Final;
                let new_start = piece.start_offset();
                let (start, bytes) = self.fill_carried(piece).await?;
                if last && bytes.is_empty() {
                    // Another process promoted every carried byte meanwhile and the request
                    // brought none: the recorded parts already end where the blob does, and S3
                    // refuses an empty part.
                    self.in_flight.push_back(Self::ready(Durable {
                        end_offset,
                        parts: Vec::new(),
                        store_state: self.state.encode(),
                        staged: None,
                        consumed_staged,
                    }));
                    return self.drain_to_concurrency().await;
                }
                if !last && bytes.len() < MIN_PART_SIZE {
                    // S3 refuses a non-last part under 5 MiB at completion: never upload one.
                    let new = bytes.slice((new_start - start) as usize..);
                    let staged = self.keep_staged(start, bytes, new, end_offset);
                    self.in_flight.push_back(staged);
                    return self.drain_to_concurrency().await;
                }
                let number = self.next_part_number().await?;
                let store_state = self.state.encode();
                let shared = Arc::clone(&self.shared);
                let key = self.key.clone();
                tokio::spawn(async move {
                    let part = shared
                        .upload_part(&key, &multipart, number, bytes, start)
                        .await?;
                    Ok(Durable {
                        end_offset,
                        parts: vec![part],
                        store_state,
                        staged: None,
                        consumed_staged,
                    })
                })
            }
        };
        self.in_flight.push_back(task);
        self.drain_to_concurrency().await
    }

    fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    async fn settle(&mut self) -> StorageResult<Option<Durable>> {
        crate::storage::settle_oldest(&mut self.in_flight).await
    }

    fn recorded(&mut self, end_offset: u64) {
        let (done, waiting) = std::mem::take(&mut self.unrecorded)
            .into_iter()
            .partition(|u| u.end <= end_offset);
        self.unrecorded = waiting;
        for step in done {
            if let Some((start, bytes)) = step.hold {
                self.shared.local.hold(&self.upload_id, start, &bytes);
            }
            if let Some((promotion, recorded)) = step.promotion {
                self.shared.local.promoting(&self.upload_id, promotion);
                let _ = recorded.send(());
            }
        }
    }

    async fn drain(&mut self) -> StorageResult<()> {
        self.await_promotion().await
    }

    async fn complete(&mut self, parts: &[PartRecord], size: u64) -> StorageResult<String> {
        self.flush().await?;
        let shared = Arc::clone(&self.shared);
        shared.local.forget(&self.upload_id);
        let key = if let Some(object) = &self.state.object {
            object.clone()
        } else if let Some(multipart) = self.state.multipart.clone().filter(|_| !parts.is_empty()) {
            let recorded: u64 = parts.iter().map(|p| p.size).sum();
            let small = parts[..parts.len() - 1]
                .iter()
                .find(|p| (p.size as usize) < MIN_PART_SIZE);
            let mut at = 0;
            let misplaced = parts.iter().find(|p| {
                let wrong = p.start.is_some_and(|start| start != at);
                at += p.size;
                wrong
            });
            if recorded != size || small.is_some() || misplaced.is_some() {
                return Err(StorageError::State(format!(
                    "upload {}: parts hold {recorded} bytes (expected {size}); small non-last part: {small:?}; part out of place: {misplaced:?}",
                    self.upload_id
                )));
            }
            let completed = parts
                .iter()
                .map(|p| {
                    CompletedPart::builder()
                        .part_number(p.number as i32)
                        .e_tag(&p.etag)
                        .build()
                })
                .collect();
            let result = shared
                .client
                .complete_multipart_upload()
                .bucket(&shared.bucket)
                .key(&self.key)
                .upload_id(&multipart)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(completed))
                        .build(),
                )
                .send()
                .await;
            if let Err(e) = result {
                if error_code(&e) != Some("NoSuchUpload") {
                    return Err(s3_error("CompleteMultipartUpload", e));
                }
                // Completed before, by a process that stopped before publishing the blob.
                let head = shared
                    .client
                    .head_object()
                    .bucket(&shared.bucket)
                    .key(&self.key)
                    .send()
                    .await
                    .map_err(|e| s3_error("HeadObject", e))?;
                if head.content_length() != Some(size as i64) {
                    return Err(StorageError::UploadLost(format!(
                        "multipart upload {multipart} is gone and {} holds {:?} bytes, not {size}",
                        self.key,
                        head.content_length()
                    )));
                }
            }
            // Multipart uploads of requests that lost a race on this session.
            match shared.multiparts_under(&self.key).await {
                Ok(found) => {
                    for (k, id) in found.into_iter().filter(|(k, _)| *k == self.key) {
                        if let Err(e) = shared.abort_multipart(&k, &id).await {
                            tracing::warn!(upload = %self.upload_id, error = %e, "could not abort a stray multipart upload");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(upload = %self.upload_id, error = %e, "could not list multipart uploads")
                }
            }
            self.key.clone()
        } else if size == 0 {
            shared.put_object(&self.key, Bytes::new()).await?;
            self.key.clone()
        } else {
            return Err(StorageError::State(format!(
                "upload {} holds {size} bytes but no parts or object were recorded",
                self.upload_id
            )));
        };
        Ok(key)
    }

    async fn abandon(&mut self) {
        while !self.in_flight.is_empty() {
            let _ = self.settle().await;
        }
        // Staged bytes that were never recorded are neither copied nor promoted.
        self.unrecorded.clear();
        // A whole object is only ever a request's last write, so the losing checkpoint was the
        // one that would have recorded it: nobody references it.
        // Multipart uploads this writer created are aborted when the session ends.
        for key in std::mem::take(&mut self.written) {
            if let Err(e) = self.shared.delete_key(&key).await {
                tracing::warn!(key, error = %e, "could not delete an abandoned object");
            }
        }
    }
}
