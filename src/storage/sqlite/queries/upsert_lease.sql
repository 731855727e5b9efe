INSERT INTO leases (namespace, key, token, holder, acquired_at_us, expires_at_us)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (namespace, key) DO UPDATE SET token = excluded.token, holder = excluded.holder,
    acquired_at_us = excluded.acquired_at_us, expires_at_us = excluded.expires_at_us
