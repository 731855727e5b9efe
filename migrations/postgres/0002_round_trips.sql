-- Fewer round trips per write: a transaction costs one round trip to begin (lock, clock
-- and first row, sent as one multi-statement query) and one to commit (all its writes,
-- then COMMIT).

-- Replaced by that multi-statement begin.
DROP FUNCTION baton_lock_now(BIGINT, BIGINT);

-- The writes of one transaction, sent together with its COMMIT in one round trip.
-- `ops` is a JSON array of operations, applied in order; any failure aborts the
-- transaction (jsonb: parsed once, so each field costs a lookup, not a re-parse).
-- Binary payloads travel as base64. Compiled once per connection (plpgsql
-- caches the plans of the statements below), so a write costs no parse or round trip.
CREATE FUNCTION baton_flush(ops jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    op jsonb;
BEGIN
    FOR op IN SELECT value FROM jsonb_array_elements(ops) LOOP
        CASE op->>'op'
        WHEN 'machine_is' THEN
            -- The machine the caller planned with must still be current; its shared lock,
            -- held to commit, keeps a redefinition out until then.
            PERFORM pg_advisory_xact_lock_shared((op->>'lock')::BIGINT);
            IF NOT EXISTS (SELECT 1 FROM machines
                           WHERE namespace = op->>'ns' AND kind = op->>'kind'
                             AND version = (op->>'version')::BIGINT) THEN
                RAISE EXCEPTION 'machine % was redefined', op->>'kind' USING ERRCODE = 'BA001';
            END IF;
        WHEN 'request' THEN
            INSERT INTO requests (namespace, request_id, method, outcome, created_at_us)
            VALUES (op->>'ns', op->>'rid', op->>'method', op->>'outcome', (op->>'at')::BIGINT);
        WHEN 'lease' THEN
            INSERT INTO leases (namespace, key, token, holder, acquired_at_us, expires_at_us)
            VALUES (op->>'ns', op->>'key', (op->>'token')::BIGINT, op->>'holder',
                    (op->>'acquired')::BIGINT, (op->>'expires')::BIGINT)
            ON CONFLICT (namespace, key) DO UPDATE SET token = excluded.token, holder = excluded.holder,
                acquired_at_us = excluded.acquired_at_us, expires_at_us = excluded.expires_at_us;
        WHEN 'end_lease' THEN
            UPDATE leases SET holder = NULL WHERE namespace = op->>'ns' AND key = op->>'key';
        WHEN 'machine' THEN
            INSERT INTO machines (namespace, kind, version, spec, defined_at_us)
            VALUES (op->>'ns', op->>'kind', (op->>'version')::BIGINT, op->>'spec', (op->>'at')::BIGINT)
            ON CONFLICT (namespace, kind) DO UPDATE SET version = excluded.version, spec = excluded.spec,
                defined_at_us = excluded.defined_at_us;
        WHEN 'insert_entity' THEN
            INSERT INTO entities (namespace, id, kind, state, version, fields, dedup_key, created_at_us,
                                  updated_at_us, last_activity_at_us, last_seq, final_seq)
            VALUES (op->>'ns', op->>'id', op->>'kind', op->>'state', (op->>'version')::BIGINT, op->>'fields',
                    op->>'dedup', (op->>'created')::BIGINT, (op->>'updated')::BIGINT,
                    (op->>'activity')::BIGINT, (op->>'last_seq')::BIGINT, (op->>'final_seq')::BIGINT);
        WHEN 'update_entity' THEN
            UPDATE entities SET state = op->>'state', version = (op->>'version')::BIGINT,
                fields = op->>'fields', updated_at_us = (op->>'updated')::BIGINT,
                last_activity_at_us = (op->>'activity')::BIGINT, last_seq = (op->>'last_seq')::BIGINT,
                final_seq = (op->>'final_seq')::BIGINT
            WHERE namespace = op->>'ns' AND id = op->>'id';
        WHEN 'events' THEN
            INSERT INTO events (namespace, entity_id, seq, type, content_type, payload, state, created_at_us)
            SELECT op->>'ns', op->>'id', (e->>'seq')::BIGINT, e->>'type', e->>'ct',
                   decode(e->>'payload', 'base64'), e->>'state', (e->>'at')::BIGINT
            FROM jsonb_array_elements(op->'events') AS e;
        ELSE
            RAISE EXCEPTION 'baton_flush: unknown operation %', op->>'op';
        END CASE;
    END LOOP;
END
$$;

