-- Events; $1 is a JSON array of [namespace, entity_id, seq, type, content_type, payload
-- (hex), state, created_at_us] rows.
INSERT INTO events (namespace, entity_id, seq, type, content_type, payload, state, created_at_us)
SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, unhex(value ->> 5),
       value ->> 6, value ->> 7
FROM json_each($1)
