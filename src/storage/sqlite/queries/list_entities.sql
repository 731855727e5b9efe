-- A page of a kind's entities, ordered by id: $3 states (a JSON array; empty: any), $4 fields
-- that must be present, $5 fields that must be absent, $6 the last id of the previous page
-- (or NULL), $7 the page size, $8 the most bytes the page may hold (each entity counted as
-- its fields' JSON plus 256). Field names are identifiers ([a-z][a-z0-9_]*). The page is
-- chosen from the sizes alone; it ends with the first entity that does not fit (`fits`
-- false), if one came within the page size (the first always fits).
WITH page AS (
    SELECT id, row_number() OVER (ORDER BY id) AS n, sum(len) OVER (ORDER BY id) - len AS before, len
    FROM (
        SELECT e.id, length(CAST(e.fields AS BLOB)) + 256 AS len
        FROM entities e
        WHERE e.namespace = $1 AND e.kind = $2
          AND (json_array_length($3) = 0 OR e.state IN (SELECT value FROM json_each($3)))
          AND NOT EXISTS (SELECT 1 FROM json_each($4) f WHERE json_extract(e.fields, '$.' || f.value) IS NULL)
          AND NOT EXISTS (SELECT 1 FROM json_each($5) f WHERE json_extract(e.fields, '$.' || f.value) IS NOT NULL)
          AND ($6 IS NULL OR e.id > $6)
        ORDER BY e.id
        LIMIT $7
    ) head
)
SELECT e.id, e.kind, e.state, e.version, e.fields, e.dedup_key, e.created_at_us, e.updated_at_us,
       e.last_activity_at_us, e.last_seq, e.final_seq, e.due_at_us,
       (page.n = 1 OR page.before + page.len <= $8) AS fits
FROM page JOIN entities e ON e.namespace = $1 AND e.id = page.id
WHERE page.n <= 2 OR page.before <= $8
ORDER BY e.id
