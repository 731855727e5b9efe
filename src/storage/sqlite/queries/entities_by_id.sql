-- Entities by (namespace, id); $1 is a JSON array of [namespace, id] pairs.
SELECT e.namespace, e.id, e.kind, e.state, e.version, e.fields, e.dedup_key, e.created_at_us,
       e.updated_at_us, e.last_activity_at_us, e.last_seq, e.final_seq, e.due_at_us
FROM json_each($1) AS k
JOIN entities e ON e.namespace = k.value ->> 0 AND e.id = k.value ->> 1
