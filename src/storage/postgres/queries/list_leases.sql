-- A page of live leases, ordered by key: $2 a key prefix (empty: all), $3 store time, $4
-- the last key of the previous page (or NULL), $5 the page size.
SELECT key, token, holder, acquired_at_us, expires_at_us
FROM leases
WHERE namespace = $1 AND starts_with(key, $2) AND holder IS NOT NULL AND expires_at_us > $3
  AND ($4::text IS NULL OR key > $4::text)
ORDER BY key
LIMIT $5
