-- The machines of the entities $1/$2 (namespaces, ids) and of the kinds $3/$4.
SELECT m.namespace, m.kind, m.version, m.spec, m.defined_at_us
FROM machines m
WHERE (m.namespace, m.kind) IN (
    SELECT e.namespace, e.kind
    FROM unnest($1::text[], $2::text[]) AS k(namespace, id)
    JOIN entities e ON e.namespace = k.namespace AND e.id = k.id
    UNION
    SELECT namespace, kind FROM unnest($3::text[], $4::text[]) AS k(namespace, kind))
