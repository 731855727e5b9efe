-- A page of a kind's entities, ordered by id: $3 states (a JSON array; empty: any), $4 fields
-- that must be present, $5 fields that must be absent, $6 the last id of the previous page
-- (or NULL), $7 the page size. Field names are identifiers ([a-z][a-z0-9_]*).
SELECT id, kind, state, version, fields, dedup_key, created_at_us, updated_at_us,
       last_activity_at_us, last_seq, final_seq, due_at_us
FROM entities e
WHERE e.namespace = $1 AND e.kind = $2
  AND (json_array_length($3) = 0 OR e.state IN (SELECT value FROM json_each($3)))
  AND NOT EXISTS (SELECT 1 FROM json_each($4) f WHERE json_extract(e.fields, '$.' || f.value) IS NULL)
  AND NOT EXISTS (SELECT 1 FROM json_each($5) f WHERE json_extract(e.fields, '$.' || f.value) IS NOT NULL)
  AND ($6 IS NULL OR e.id > $6)
ORDER BY e.id
LIMIT $7
