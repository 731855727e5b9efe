SELECT id, kind, state, version, fields, dedup_key, created_at_us, updated_at_us,
       last_activity_at_us, last_seq, final_seq, due_at_us
FROM entities WHERE namespace = $1 AND id = $2
