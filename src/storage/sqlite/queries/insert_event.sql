INSERT INTO events (namespace, entity_id, seq, type, content_type, payload, state, created_at_us)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
