-- A mirror's state shared by every replica.
--
-- When each tag read through from an upstream was last checked against it: the tag is served
-- from here until its upstream's tag TTL has passed since then.
CREATE TABLE mirror_tag_checks (
    repository TEXT NOT NULL,
    tag TEXT NOT NULL,
    checked_at BIGINT NOT NULL,
    PRIMARY KEY (repository, tag)
);

-- Blobs being fetched from an upstream: one row per digest, held by the process fetching it
-- until lease_until (renewed while the fetch runs), so that concurrent pulls on every replica
-- wait for that one fetch instead of starting their own. A process that dies leaves a row
-- whose lease runs out, and the next pull takes it over.
CREATE TABLE mirror_fetches (
    digest TEXT PRIMARY KEY,
    repository TEXT NOT NULL,
    owner TEXT NOT NULL,
    lease_until BIGINT NOT NULL
);
