-- Machines by (namespace, kind); $1 is a JSON array of pairs.
SELECT m.namespace, m.kind, m.version, m.spec, m.defined_at_us
FROM json_each($1) AS k
JOIN machines m ON m.namespace = k.value ->> 0 AND m.kind = k.value ->> 1
