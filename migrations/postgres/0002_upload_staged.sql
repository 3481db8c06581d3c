-- Bytes at the end of an upload that the blob store could not write yet (S3 wants parts of
-- at least 5 MiB). Written in the same transaction as the session's new offset.
CREATE TABLE upload_staged (
    upload_id     TEXT NOT NULL REFERENCES upload_sessions (id) ON DELETE CASCADE,
    start_offset  BIGINT NOT NULL,
    bytes         BYTEA NOT NULL,
    PRIMARY KEY (upload_id, start_offset)
);
-- Blob bytes do not compress: store them out of line without trying.
ALTER TABLE upload_staged ALTER COLUMN bytes SET STORAGE EXTERNAL;
