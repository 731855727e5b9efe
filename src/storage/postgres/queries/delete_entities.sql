-- Entities deleted (retention, DeleteEntity) with their tapes, given as two arrays.
WITH gone AS (
    DELETE FROM events v USING unnest($1::text[], $2::text[]) AS k(namespace, id)
    WHERE v.namespace = k.namespace AND v.entity_id = k.id
)
DELETE FROM entities e USING unnest($1::text[], $2::text[]) AS k(namespace, id)
WHERE e.namespace = k.namespace AND e.id = k.id
