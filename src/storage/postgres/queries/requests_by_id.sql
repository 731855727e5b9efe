SELECT r.namespace, r.request_id, r.method, r.outcome
FROM unnest($1::text[], $2::text[]) AS k(namespace, request_id)
JOIN requests r ON r.namespace = k.namespace AND r.request_id = k.request_id
