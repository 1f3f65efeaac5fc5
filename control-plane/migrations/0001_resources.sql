-- Declared resources: one row per (kind, name, version); spec is the protobuf encoding of millrace.v1.Resource.
CREATE TABLE resources (
    kind          TEXT        NOT NULL,
    name          TEXT        NOT NULL,
    version       TEXT        NOT NULL,
    spec          BYTEA       NOT NULL,
    physical_name TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name, version)
);

-- Every apply and delete: who, when, and what changed.
CREATE TABLE applies (
    id         BIGSERIAL   PRIMARY KEY,
    client     TEXT        NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    changes    JSONB       NOT NULL
);
