-- Workers and their leases. A worker that registers again gets a new id and a higher generation.
CREATE SEQUENCE worker_generation;
CREATE TABLE workers (
    worker_id        TEXT        PRIMARY KEY,
    name             TEXT        NOT NULL,
    http_address     TEXT        NOT NULL,
    generation       BIGINT      NOT NULL,
    lease_expires_at TIMESTAMPTZ NOT NULL,
    registered_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per unit of work (a partition of a transform or consumer): who holds it, at which epoch, and the
-- source offset committed for it (the next one to process; -1 = none yet). The epoch only grows.
CREATE TABLE assignments (
    unit_id          TEXT        PRIMARY KEY,
    worker_id        TEXT        NULL,
    epoch            BIGINT      NOT NULL,
    committed_offset BIGINT      NOT NULL DEFAULT -1,
    lag              BIGINT      NOT NULL DEFAULT -1,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
