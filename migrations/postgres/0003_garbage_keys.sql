-- Storage to remove can also be a finished object no blob row references any more (a blob
-- found damaged and forgotten by the scrubber): its key. Entries of abandoned uploads keep
-- naming the upload instead, with no key.
ALTER TABLE storage_garbage ADD COLUMN storage_key TEXT;
