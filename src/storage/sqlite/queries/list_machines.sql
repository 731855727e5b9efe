-- A page of a namespace's machines, ordered by kind: $2 the last kind of the previous page
-- (or NULL), $3 the page size, $4 the most bytes the page may hold (each machine counted as
-- its spec's JSON plus 64). The page ends with the first machine that does not fit
-- (`fits` false), if one came within the page size (the first always fits).
WITH page AS (
    SELECT kind, row_number() OVER (ORDER BY kind) AS n, sum(len) OVER (ORDER BY kind) - len AS before, len
    FROM (
        SELECT kind, length(CAST(spec AS BLOB)) + 64 AS len
        FROM machines
        WHERE namespace = $1 AND ($2 IS NULL OR kind > $2)
        ORDER BY kind
        LIMIT $3
    ) head
)
SELECT m.kind, m.version, m.spec, m.defined_at_us, (page.n = 1 OR page.before + page.len <= $4) AS fits
FROM page JOIN machines m ON m.namespace = $1 AND m.kind = page.kind
WHERE page.n <= 2 OR page.before <= $4
ORDER BY m.kind
