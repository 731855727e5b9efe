SELECT version FROM machines WHERE namespace = $1 AND kind = $2
