-- Where each part starts in its upload. Staged bytes can become a part in the background
-- (a promotion) while a request that read them earlier writes them into a part of its own;
-- the later of the two replaces the parts that start at or after its own start, so the parts
-- always cover the upload once, in order. NULL for parts recorded before this column existed.
ALTER TABLE upload_parts ADD COLUMN start_offset BIGINT;
