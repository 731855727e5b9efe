UPDATE entities SET state = $3, version = $4, fields = $5, updated_at_us = $6,
    last_activity_at_us = $7, last_seq = $8, final_seq = $9
WHERE namespace = $1 AND id = $2
