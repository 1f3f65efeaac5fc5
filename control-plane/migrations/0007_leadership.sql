-- Leadership among control planes sharing this database. One row: who leads (`holder`, a per-process uuid), in
-- which term (grows by one at every change of leader), where it answers (`address`, for forwarded writes and for
-- `millrace status`), and until when, by Postgres' clock. Only the leader runs scheduling rounds, and every round
-- and apply checks its term in its own transaction, so a leader that lost its lease (paused, cut off) commits
-- nothing after another took over. `worker_lease_ms` is the workers' lease as the cluster enforces it (written by
-- each leader when it takes office): every replica grants it on registration and heartbeat, whatever its flags.
CREATE TABLE leader (
    id              BOOLEAN     PRIMARY KEY DEFAULT TRUE CHECK (id),
    holder          TEXT        NOT NULL DEFAULT '',
    term            BIGINT      NOT NULL DEFAULT 0,
    address         TEXT        NOT NULL DEFAULT '',
    expires_at      TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    worker_lease_ms BIGINT      NULL
);
INSERT INTO leader DEFAULT VALUES;
