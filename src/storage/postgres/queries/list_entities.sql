-- A page of a kind's entities, ordered by id: $3 states (empty: any), $4 fields that must be
-- present, $5 fields that must be absent, $6 the last id of the previous page (or NULL), $7
-- the page size.
SELECT id, kind, state, version, fields, dedup_key, created_at_us, updated_at_us,
       last_activity_at_us, last_seq, final_seq, due_at_us
FROM entities e
WHERE e.namespace = $1 AND e.kind = $2
  AND (cardinality($3::text[]) = 0 OR e.state = ANY($3::text[]))
  AND NOT EXISTS (SELECT 1 FROM unnest($4::text[]) f WHERE (e.fields::jsonb ->> f) IS NULL)
  AND NOT EXISTS (SELECT 1 FROM unnest($5::text[]) f WHERE (e.fields::jsonb ->> f) IS NOT NULL)
  AND ($6::text IS NULL OR e.id > $6::text)
ORDER BY e.id
LIMIT $7
