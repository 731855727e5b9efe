INSERT INTO entities (namespace, id, kind, state, version, fields, dedup_key, created_at_us,
                      updated_at_us, last_activity_at_us, last_seq, final_seq, due_at_us)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[],
                     $7::text[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[],
                     $13::int8[])
