-- Tape heads by (namespace, id); $1 is a JSON array of pairs.
SELECT e.namespace, e.id, e.last_seq
FROM json_each($1) AS k
JOIN entities e ON e.namespace = k.value ->> 0 AND e.id = k.value ->> 1
