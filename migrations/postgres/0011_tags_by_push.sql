-- The web UI lists a repository's tags newest first, a page at a time; this index serves that
-- order (and its cursor) without sorting every tag of the repository.
CREATE INDEX tags_by_push ON tags (repository_id, updated_at, name);
