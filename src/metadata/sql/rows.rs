//! Values in and out of rows: Berth's unsigned sizes as the databases' `BIGINT`, and columns
//! read back into Berth's types. A value Berth would not have written (a negative size, a
//! digest that does not parse) is `Corrupt`.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::metadata::{BlobRecord, MetadataError, MetadataResult, Page};
use crate::oci::Digest;

/// A size or offset as a `BIGINT` (saturating; none comes near).
pub(super) fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn u64_of(row: &AnyRow, column: &str) -> MetadataResult<u64> {
    let v: i64 = row.try_get(column)?;
    u64::try_from(v).map_err(|_| MetadataError::Corrupt(format!("negative {column}: {v}")))
}

pub(super) fn digest_of(row: &AnyRow, column: &str) -> MetadataResult<Digest> {
    let s: String = row.try_get(column)?;
    Digest::parse(&s).map_err(|e| MetadataError::Corrupt(format!("{column}: {e}")))
}

/// A blob row (`size`, `storage_key`) of `digest`.
pub(super) fn blob_record(row: &AnyRow, digest: Digest) -> MetadataResult<BlobRecord> {
    Ok(BlobRecord {
        digest,
        size: u64_of(row, "size")?,
        storage_key: row.try_get("storage_key")?,
    })
}

/// The `LIMIT` of a page (all rows for none).
pub(super) fn limit_of(page: Page<'_>) -> i64 {
    page.limit.map(i64::from).unwrap_or(i64::MAX)
}

/// The (`repository_id`, `digest`) of each row.
pub(super) fn pairs_of(rows: &[AnyRow]) -> MetadataResult<Vec<(i64, String)>> {
    rows.iter()
        .map(|r| Ok((r.try_get("repository_id")?, r.try_get("digest")?)))
        .collect()
}

/// The `digest` of each row.
pub(super) fn digests_of(rows: &[AnyRow]) -> MetadataResult<Vec<String>> {
    rows.iter().map(|r| Ok(r.try_get("digest")?)).collect()
}
