-- Deleted entities; $1 is a JSON array of [namespace, id] pairs.
DELETE FROM entities
WHERE EXISTS (SELECT 1 FROM json_each($1) AS k
              WHERE entities.namespace = k.value ->> 0 AND entities.id = k.value ->> 1)
