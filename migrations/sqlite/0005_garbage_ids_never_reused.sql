-- A garbage entry is forgotten by its id once its storage is removed, possibly by a process
-- that read the entry a moment before another removed it. Without AUTOINCREMENT, SQLite hands
-- the largest id out again once its row is deleted: the late forget then deleted a newer entry
-- and left that entry's bytes in storage with no record of them. AUTOINCREMENT ids are never
-- reused, like Postgres identities.
CREATE TABLE storage_garbage_ids (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    upload_id    TEXT NOT NULL,
    store_state  TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    storage_key  TEXT
);
INSERT INTO storage_garbage_ids (id, upload_id, store_state, created_at, storage_key)
    SELECT id, upload_id, store_state, created_at, storage_key FROM storage_garbage;
DROP TABLE storage_garbage;
ALTER TABLE storage_garbage_ids RENAME TO storage_garbage;
