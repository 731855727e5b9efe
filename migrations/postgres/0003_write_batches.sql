-- Write batches (group commit): a batch takes its keys' locks and reads its rows in one
-- round trip, and writes with typed statements (arrays, unnest) and commits in another.
-- The JSON op-log of 0002 goes.
DROP FUNCTION baton_flush(jsonb);

-- Takes a batch's advisory transaction locks in the order given (the caller sorts them:
-- one global order, so batches of different replicas never deadlock). Each lock is tried,
-- so a key another replica holds does not stall the batch (its commands wait for a later
-- one); with `wait`, each is waited for instead (a batch whose commands were put off
-- repeatedly). Returns whether each lock is held.
CREATE FUNCTION baton_lock(keys bigint[], shared boolean[], wait boolean) RETURNS boolean[]
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    held boolean[] := '{}';
BEGIN
    FOR i IN 1 .. coalesce(array_length(keys, 1), 0) LOOP
        IF wait AND shared[i] THEN
            PERFORM pg_advisory_xact_lock_shared(keys[i]);
            held := held || true;
        ELSIF wait THEN
            PERFORM pg_advisory_xact_lock(keys[i]);
            held := held || true;
        ELSIF shared[i] THEN
            held := held || pg_try_advisory_xact_lock_shared(keys[i]);
        ELSE
            held := held || pg_try_advisory_xact_lock(keys[i]);
        END IF;
    END LOOP;
    RETURN held;
END
$$;

-- The first statement of a batch's commit: every machine its writes were decided with must
-- still be at the version it read. Each kind's lock is held shared to the commit, so a
-- redefinition (which takes it exclusively) cannot commit in between.
CREATE FUNCTION baton_expect_machines(namespaces text[], kinds text[], versions bigint[], locks bigint[])
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(kinds, 1), 0) LOOP
        PERFORM pg_advisory_xact_lock_shared(locks[i]);
        IF NOT EXISTS (SELECT 1 FROM machines
                       WHERE namespace = namespaces[i] AND kind = kinds[i] AND version = versions[i]) THEN
            RAISE EXCEPTION 'machine % was redefined', kinds[i] USING ERRCODE = 'BA001';
        END IF;
    END LOOP;
END
$$;
