SELECT state FROM entities WHERE namespace = $1 AND kind = $2 AND state = ANY($3::text[]) LIMIT 1
