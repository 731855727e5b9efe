-- State timeouts and retention: each entity carries when the housekeeper must look at it
-- next (its state's timeout, or its purge once finished), found by this index.
ALTER TABLE entities ADD COLUMN due_at_us INTEGER;
CREATE INDEX entities_due ON entities (due_at_us) WHERE due_at_us IS NOT NULL;
