-- Where the process holding a blob fetch serves the bytes it has read so far (its advertised
-- URL), so that a pull on another replica follows the fetch instead of waiting for it to be
-- stored. NULL when the holder advertises none.
ALTER TABLE mirror_fetches ADD COLUMN relay TEXT;
