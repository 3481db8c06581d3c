-- Manifests kept from an upstream, and when each was last pulled: the collector evicts those
-- nobody pulled for the upstream's `evict_after`. A row exists only for what a mirror fetched
-- (the registry's own manifests in a name that takes pushes have none and are never evicted).
-- Pulls are counted in each process and written here in batches, not one write per pull.
CREATE TABLE mirror_pulls (
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    upstream TEXT NOT NULL,
    pulled_at BIGINT NOT NULL,
    PRIMARY KEY (repository, digest)
);
CREATE INDEX mirror_pulls_by_age ON mirror_pulls (upstream, pulled_at);
