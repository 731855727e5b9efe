INSERT INTO entities (namespace, id, kind, state, version, fields, dedup_key, created_at_us,
                      updated_at_us, last_activity_at_us, last_seq, final_seq)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
