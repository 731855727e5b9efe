INSERT INTO requests (namespace, request_id, method, outcome, created_at_us)
SELECT namespace, request_id, method, outcome, $5::int8
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS r(namespace, request_id, method, outcome)
