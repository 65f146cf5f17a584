-- The outbox relay (src/outbox): rows are published to the configured sinks (Valkey Streams,
-- Kafka) in id order and marked `published_at`. A row a sink refuses for good (it will never
-- fit) is parked instead, with the sink's reason, so it blocks nothing; operators see it in
-- `courier admin events` and release it with `courier admin events retry`.
ALTER TABLE outbox
    ADD COLUMN attempts   INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN last_error TEXT,
    ADD COLUMN parked_at  TIMESTAMPTZ;

-- What the relay reads: the unpublished, unparked rows in id order. (Housekeeping prunes
-- published rows from the oldest id on, through the primary key: no index on `published_at`,
-- which every publication would have to update.)
DROP INDEX idx_outbox_unpublished;
CREATE INDEX idx_outbox_unpublished ON outbox (id) WHERE published_at IS NULL AND parked_at IS NULL;

-- Wakes the relay the moment rows commit (it also polls, in case a notification is missed).
-- Once per statement, and Postgres folds identical notifications of one transaction into one.
CREATE FUNCTION courier_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('courier_outbox', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION courier_outbox_notify();
