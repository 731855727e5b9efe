-- A page of a namespace's machines, ordered by kind: $2 the last kind of the previous page
-- (or NULL), $3 the page size.
SELECT kind, version, spec, defined_at_us
FROM machines
WHERE namespace = $1 AND ($2::text IS NULL OR kind > $2::text)
ORDER BY kind
LIMIT $3
