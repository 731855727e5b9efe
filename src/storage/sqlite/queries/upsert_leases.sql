-- Leases, new or updated; $1 is a JSON array of
-- [namespace, key, token, holder, acquired_at_us, expires_at_us] rows.
INSERT INTO leases (namespace, key, token, holder, acquired_at_us, expires_at_us)
SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5
FROM json_each($1) WHERE true
ON CONFLICT (namespace, key) DO UPDATE SET token = excluded.token, holder = excluded.holder,
    acquired_at_us = excluded.acquired_at_us, expires_at_us = excluded.expires_at_us
