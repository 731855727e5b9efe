INSERT INTO events (namespace, entity_id, seq, type, content_type, payload, state, created_at_us)
SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::bytea[],
                     $7::text[], $8::int8[])
