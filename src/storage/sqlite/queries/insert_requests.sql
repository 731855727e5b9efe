-- Request outcomes; $1 is a JSON array of [namespace, request_id, method, outcome (JSON
-- text), created_at_us] rows.
INSERT INTO requests (namespace, request_id, method, outcome, created_at_us)
SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4
FROM json_each($1)
