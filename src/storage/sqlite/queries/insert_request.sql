INSERT INTO requests (namespace, request_id, method, outcome, created_at_us) VALUES ($1, $2, $3, $4, $5)
