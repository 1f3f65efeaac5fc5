-- Units a worker said it cannot run although another worker might: its sidecar does not host the unit's function
-- (or hosts it as the other kind), or it has no sidecar of that name. The scheduler places the unit on a live
-- worker that has not refused it. A refusal belongs to one registration of the worker (`generation`: a worker that
-- registers again, with a redeployed sidecar say, has refused nothing), and ends when the worker reports the unit
-- running, when the unit is redefined or removed, or after a minute, so that a sidecar that gained the function
-- is tried again.
CREATE TABLE unit_refusals (
    unit_id    TEXT        NOT NULL,
    worker_id  TEXT        NOT NULL,
    generation BIGINT      NOT NULL,
    reason     TEXT        NOT NULL,
    refused_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (unit_id, worker_id)
);
