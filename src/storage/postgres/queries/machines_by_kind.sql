-- Machines by (namespace, kind), given as two arrays.
SELECT m.namespace, m.kind, m.version, m.spec, m.defined_at_us
FROM unnest($1::text[], $2::text[]) AS k(namespace, kind)
JOIN machines m ON m.namespace = k.namespace AND m.kind = k.kind
