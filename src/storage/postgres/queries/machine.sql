SELECT kind, version, spec, defined_at_us FROM machines WHERE namespace = $1 AND kind = $2
