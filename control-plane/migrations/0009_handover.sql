-- A planned move between two live workers is a hand-over: the unit stays with its holder (worker_id, epoch) while
-- that worker finishes what it has in flight, commits and lets go; then it goes to `handover_to` at a new epoch.
-- `handover_since` bounds the wait: a holder that does not let go in time loses the unit anyway.
ALTER TABLE assignments ADD COLUMN IF NOT EXISTS handover_to TEXT;
ALTER TABLE assignments ADD COLUMN IF NOT EXISTS handover_since TIMESTAMPTZ;
