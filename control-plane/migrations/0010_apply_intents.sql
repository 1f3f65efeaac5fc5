-- An apply (or delete) between its check and its record. Provisioning (the broker, ClickHouse) runs outside any
-- transaction: the apply records its intent, provisions, then records the plan and removes the intent in one
-- transaction. A control plane that dies in between leaves the row, and the next apply or the next leader finishes
-- it (provisioning is idempotent). `one` keeps at most one row: applies run one at a time.
CREATE TABLE IF NOT EXISTS apply_intents (
    id BIGSERIAL PRIMARY KEY,
    one BOOLEAN NOT NULL DEFAULT TRUE UNIQUE CHECK (one),
    kind TEXT NOT NULL CHECK (kind IN ('apply', 'delete')),
    payload BYTEA NOT NULL,
    client TEXT NOT NULL,
    term BIGINT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
