-- Lease rows by (namespace, key); $1 is a JSON array of pairs.
SELECT l.namespace, l.key, l.token, l.holder, l.acquired_at_us, l.expires_at_us
FROM json_each($1) AS k
JOIN leases l ON l.namespace = k.value ->> 0 AND l.key = k.value ->> 1
