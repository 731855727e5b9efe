SELECT e.namespace, e.id, e.last_seq
FROM unnest($1::text[], $2::text[]) AS k(namespace, id)
JOIN entities e ON e.namespace = k.namespace AND e.id = k.id
