SELECT l.namespace, l.key, l.token, l.holder, l.acquired_at_us, l.expires_at_us
FROM unnest($1::text[], $2::text[]) AS k(namespace, key)
JOIN leases l ON l.namespace = k.namespace AND l.key = k.key
