-- Stored request outcomes by (namespace, request id); $1 is a JSON array of pairs.
SELECT r.namespace, r.request_id, r.method, r.outcome
FROM json_each($1) AS k
JOIN requests r ON r.namespace = k.value ->> 0 AND r.request_id = k.value ->> 1
