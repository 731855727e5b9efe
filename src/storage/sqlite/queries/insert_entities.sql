-- New entities; $1 is a JSON array of [namespace, id, kind, state, version, fields (JSON
-- text), dedup_key, created_at_us, updated_at_us, last_activity_at_us, last_seq, final_seq,
-- due_at_us] rows.
INSERT INTO entities (namespace, id, kind, state, version, fields, dedup_key, created_at_us,
                      updated_at_us, last_activity_at_us, last_seq, final_seq, due_at_us)
SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5,
       value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10, value ->> 11,
       value ->> 12
FROM json_each($1)
