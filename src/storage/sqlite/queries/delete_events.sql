-- The tapes of deleted entities; $1 is a JSON array of [namespace, id] pairs.
DELETE FROM events
WHERE EXISTS (SELECT 1 FROM json_each($1) AS k
              WHERE events.namespace = k.value ->> 0 AND events.entity_id = k.value ->> 1)
