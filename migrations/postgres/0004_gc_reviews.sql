-- Online garbage collection. A review asks the collector to look at a blob link (or a blob)
-- again once the grace period has passed since queued_at. It is written in the same
-- transaction as the change that may leave the link or blob unreferenced: a link made by an
-- upload or a mount (nothing may ever reference it), a manifest deleted (its blobs), a link
-- deleted (its blob). Whatever has no review is referenced, so the collector never scans.
CREATE TABLE gc_link_reviews (
    repository_id  BIGINT NOT NULL,
    digest         TEXT NOT NULL,
    queued_at      BIGINT NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX gc_link_reviews_by_age ON gc_link_reviews (queued_at);

CREATE TABLE gc_blob_reviews (
    digest     TEXT PRIMARY KEY,
    queued_at  BIGINT NOT NULL
);
CREATE INDEX gc_blob_reviews_by_age ON gc_blob_reviews (queued_at);

-- Untagged manifests are looked for by age.
CREATE INDEX manifests_by_age ON manifests (created_at);
CREATE INDEX manifest_blobs_by_repository_blob ON manifest_blobs (repository_id, blob_digest);

-- What was there before: every link no manifest references, every blob no link keeps.
INSERT INTO gc_link_reviews (repository_id, digest, queued_at)
SELECT rb.repository_id, rb.digest, rb.created_at FROM repository_blobs rb
WHERE NOT EXISTS (SELECT 1 FROM manifest_blobs mb
                  WHERE mb.repository_id = rb.repository_id AND mb.blob_digest = rb.digest);
INSERT INTO gc_blob_reviews (digest, queued_at)
SELECT b.digest, b.created_at FROM blobs b
WHERE NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = b.digest);
