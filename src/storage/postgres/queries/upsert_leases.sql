INSERT INTO leases (namespace, key, token, holder, acquired_at_us, expires_at_us)
SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::int8[], $6::int8[])
ON CONFLICT (namespace, key) DO UPDATE SET token = excluded.token, holder = excluded.holder,
    acquired_at_us = excluded.acquired_at_us, expires_at_us = excluded.expires_at_us
