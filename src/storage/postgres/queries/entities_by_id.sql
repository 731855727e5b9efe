-- Entities by (namespace, id), given as two arrays.
SELECT e.namespace, e.id, e.kind, e.state, e.version, e.fields, e.dedup_key, e.created_at_us,
       e.updated_at_us, e.last_activity_at_us, e.last_seq, e.final_seq, e.due_at_us
FROM unnest($1::text[], $2::text[]) AS k(namespace, id)
JOIN entities e ON e.namespace = k.namespace AND e.id = k.id
