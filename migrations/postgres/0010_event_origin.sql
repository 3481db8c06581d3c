-- Who asked for each change (Distribution's `actor` and `request`), and an index for the
-- dead-letter gauge, which counts dead rows without reading the delivered ones.
ALTER TABLE event_outbox ADD COLUMN actor TEXT;
ALTER TABLE event_outbox ADD COLUMN request_id TEXT;
ALTER TABLE event_outbox ADD COLUMN client_addr TEXT;
ALTER TABLE event_outbox ADD COLUMN user_agent TEXT;
CREATE INDEX event_outbox_dead ON event_outbox (endpoint) WHERE state = 'dead';
