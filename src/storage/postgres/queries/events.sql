SELECT seq, type, content_type, payload, state, created_at_us FROM events
WHERE namespace = $1 AND entity_id = $2 AND seq > $3 ORDER BY seq LIMIT $4
