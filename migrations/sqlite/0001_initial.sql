-- Berth metadata, SQLite flavour. Times are Unix milliseconds; sizes and offsets are bytes.

CREATE TABLE repositories (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

-- Digest -> where the bytes live. A row exists only once its bytes are complete and verified.
CREATE TABLE blobs (
    digest       TEXT PRIMARY KEY,
    size         INTEGER NOT NULL,
    storage_key  TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);

-- A blob is readable through a repository only while linked to it.
CREATE TABLE repository_blobs (
    repository_id  INTEGER NOT NULL REFERENCES repositories (id),
    digest         TEXT NOT NULL REFERENCES blobs (digest),
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX repository_blobs_by_digest ON repository_blobs (digest);

CREATE TABLE manifests (
    repository_id  INTEGER NOT NULL REFERENCES repositories (id),
    digest         TEXT NOT NULL,
    media_type     TEXT NOT NULL,
    size           INTEGER NOT NULL,
    content        BLOB NOT NULL,
    subject        TEXT,
    artifact_type  TEXT,
    annotations    TEXT,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX manifests_by_subject ON manifests (repository_id, subject, digest)
    WHERE subject IS NOT NULL;

-- Manifest -> blob references (config and layers).
CREATE TABLE manifest_blobs (
    repository_id    INTEGER NOT NULL,
    manifest_digest  TEXT NOT NULL,
    blob_digest      TEXT NOT NULL,
    PRIMARY KEY (repository_id, manifest_digest, blob_digest),
    FOREIGN KEY (repository_id, manifest_digest)
        REFERENCES manifests (repository_id, digest) ON DELETE CASCADE
);
CREATE INDEX manifest_blobs_by_blob ON manifest_blobs (blob_digest);

-- Index -> child manifest references.
CREATE TABLE manifest_children (
    repository_id  INTEGER NOT NULL,
    parent_digest  TEXT NOT NULL,
    child_digest   TEXT NOT NULL,
    PRIMARY KEY (repository_id, parent_digest, child_digest),
    FOREIGN KEY (repository_id, parent_digest)
        REFERENCES manifests (repository_id, digest) ON DELETE CASCADE
);
CREATE INDEX manifest_children_by_child ON manifest_children (repository_id, child_digest);

CREATE TABLE tags (
    repository_id    INTEGER NOT NULL,
    name             TEXT NOT NULL,
    manifest_digest  TEXT NOT NULL,
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (repository_id, name),
    FOREIGN KEY (repository_id, manifest_digest)
        REFERENCES manifests (repository_id, digest) ON DELETE CASCADE
);
CREATE INDEX tags_by_manifest ON tags (repository_id, manifest_digest);

CREATE TABLE upload_sessions (
    id           TEXT PRIMARY KEY,
    repository   TEXT NOT NULL,
    byte_offset  INTEGER NOT NULL,
    algorithm    TEXT NOT NULL,
    hash_state   BLOB NOT NULL,
    store_state  TEXT NOT NULL,
    next_part    INTEGER NOT NULL DEFAULT 1,
    committing   INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX upload_sessions_by_age ON upload_sessions (updated_at);

CREATE TABLE upload_parts (
    upload_id    TEXT NOT NULL REFERENCES upload_sessions (id) ON DELETE CASCADE,
    part_number  INTEGER NOT NULL,
    size         INTEGER NOT NULL,
    etag         TEXT NOT NULL,
    PRIMARY KEY (upload_id, part_number)
);

-- Storage that no row references any more, waiting to be removed from the blob store.
CREATE TABLE storage_garbage (
    id           INTEGER PRIMARY KEY,
    upload_id    TEXT NOT NULL,
    store_state  TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);
