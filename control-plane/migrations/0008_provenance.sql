-- What each unit had read when it committed its offset (its provenance marks, opaque to the control plane), and
-- its source incarnation: a number that grows whenever the unit's source offsets start over, carried by its
-- outputs so that downstream units never drop them as re-emits of records read before (see the worker's
-- `unit::provenance`).
ALTER TABLE assignments ADD COLUMN provenance BYTEA NOT NULL DEFAULT '\x'::bytea;
ALTER TABLE assignments ADD COLUMN source_incarnation BIGINT NOT NULL DEFAULT 0;

-- Offsets start over without the worker saying so in two places: a new row (a unit removed and declared again),
-- and a row whose committed offset goes back (a new source topic, a table sync resuming another table's offset)
-- or which is redefined with nothing committed. A trigger covers them wherever the row is written: the
-- incarnation becomes at least the row's epoch times 2^20. Epochs come from one sequence, so that is above
-- anything the unit had before (its resets since its last new epoch are far fewer than 2^20). Resets a worker
-- finds itself it reports with the incarnation it counted (the greatest is kept): those do not go through here.
CREATE FUNCTION assignments_source_incarnation() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.source_incarnation := GREATEST(NEW.source_incarnation, NEW.epoch * 1048576);
    ELSIF NEW.source_incarnation <= OLD.source_incarnation AND (
        NEW.committed_offset < OLD.committed_offset
        OR (NEW.committed_offset = -1 AND NEW.epoch <> OLD.epoch AND NEW.definition IS DISTINCT FROM OLD.definition)
    ) THEN
        NEW.source_incarnation := GREATEST(OLD.source_incarnation + 1, NEW.epoch * 1048576);
        -- The marks were taken at the old offset: the unit starts over without them.
        NEW.provenance := '\x'::bytea;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER assignments_source_incarnation BEFORE INSERT OR UPDATE ON assignments
    FOR EACH ROW EXECUTE FUNCTION assignments_source_incarnation();
