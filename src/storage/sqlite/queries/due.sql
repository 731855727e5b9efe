-- Entities whose due time came (state timeouts, retention), soonest first.
SELECT namespace, id FROM entities
WHERE due_at_us IS NOT NULL AND due_at_us <= $1
ORDER BY due_at_us
LIMIT $2
