-- Changed entities; $1 is a JSON array of [namespace, id, state, version, fields (JSON
-- text), updated_at_us, last_activity_at_us, last_seq, final_seq, dedup_key, due_at_us] rows.
UPDATE entities SET state = u.value ->> 2, version = u.value ->> 3, fields = u.value ->> 4,
    updated_at_us = u.value ->> 5, last_activity_at_us = u.value ->> 6,
    last_seq = u.value ->> 7, final_seq = u.value ->> 8, dedup_key = u.value ->> 9,
    due_at_us = u.value ->> 10
FROM json_each($1) AS u
WHERE entities.namespace = u.value ->> 0 AND entities.id = u.value ->> 1
