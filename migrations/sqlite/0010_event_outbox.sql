-- The event outbox: one row per change and subscribed endpoint, written in the transaction of
-- the change. Rows of an endpoint are delivered in `seq` order per repository; a delivered or
-- dead-lettered row is kept until pruned.
CREATE TABLE event_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    action TEXT NOT NULL,
    repository TEXT NOT NULL,
    digest TEXT,
    media_type TEXT,
    size BIGINT,
    tag TEXT,
    created_at BIGINT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT,
    settled_at BIGINT
);
CREATE INDEX event_outbox_pending ON event_outbox (endpoint, seq) WHERE state = 'pending';
CREATE INDEX event_outbox_pending_by_repository ON event_outbox (endpoint, repository, seq)
    WHERE state = 'pending';
CREATE INDEX event_outbox_settled ON event_outbox (settled_at) WHERE state <> 'pending';

-- Which replica delivers to an endpoint, until when: claimed by a conditional update.
CREATE TABLE event_endpoints (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT '',
    lease_until BIGINT NOT NULL DEFAULT 0
);
