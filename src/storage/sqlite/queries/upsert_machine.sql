INSERT INTO machines (namespace, kind, version, spec, defined_at_us) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (namespace, kind) DO UPDATE SET version = excluded.version, spec = excluded.spec,
    defined_at_us = excluded.defined_at_us
