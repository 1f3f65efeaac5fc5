-- A secret per registration (its SHA-256 here; the worker holds the secret): the coordinator calls after Register
-- must send it, so a worker id (which ListWorkers shows) is no credential. Rows from before have none: their
-- calls are refused and those workers register again.
ALTER TABLE workers ADD COLUMN IF NOT EXISTS session_hash bytea;
