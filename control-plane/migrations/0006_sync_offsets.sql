-- A table sync's committed offset per table it has synced into: a stream synced into a new table reads the stream
-- from its start, and one synced back into a table it filled before resumes where that table left off (rather
-- than inserting every row again).
CREATE TABLE IF NOT EXISTS sync_offsets (
    unit_id TEXT NOT NULL,
    target TEXT NOT NULL,
    committed_offset BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (unit_id, target)
);
