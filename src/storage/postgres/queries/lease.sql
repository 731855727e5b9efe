SELECT key, token, holder, acquired_at_us, expires_at_us FROM leases WHERE namespace = $1 AND key = $2
