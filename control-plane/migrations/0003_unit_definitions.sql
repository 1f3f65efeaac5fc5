-- What each unit was last scheduled as (the protobuf encoding of millrace.v1.WorkUnit): a change of definition
-- bumps the unit's epoch, so the running unit is replaced, and a change of source topic also resets its committed
-- offset. `error` is what its worker last reported about it ("" = running fine).
ALTER TABLE assignments ADD COLUMN definition BYTEA NOT NULL DEFAULT ''::bytea;
ALTER TABLE assignments ADD COLUMN error      TEXT  NOT NULL DEFAULT '';
