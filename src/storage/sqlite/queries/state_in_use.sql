-- One of the states of $3 (a JSON array) that an entity of the kind is in.
SELECT e.state FROM entities e
WHERE e.namespace = $1 AND e.kind = $2 AND e.state IN (SELECT value FROM json_each($3))
LIMIT 1
