-- The broker's partition count of each topic, as last read (topics of this deployment's namespace only). Units
-- follow these counts; keeping them here means a restarted control plane knows them before the broker answers,
-- instead of counting an external topic's extra partitions as gone and deleting their committed offsets. A topic
-- the broker stops listing keeps its row: absence is not a count.
CREATE TABLE topic_partitions (
    topic      TEXT        PRIMARY KEY,
    partitions INTEGER     NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every new epoch comes from one sequence, so a unit removed and declared again gets an epoch above any it had:
-- a worker still running the old unit compares epochs only, and must see a different one (and be fenced from
-- committing into the new row). It starts above every epoch already stored, so existing rows keep theirs.
CREATE SEQUENCE unit_epoch;
SELECT setval('unit_epoch', COALESCE((SELECT max(epoch) FROM assignments), 0) + 1, false);
