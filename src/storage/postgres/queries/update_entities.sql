UPDATE entities e SET state = u.state, version = u.version, fields = u.fields,
    updated_at_us = u.updated_at_us, last_activity_at_us = u.last_activity_at_us,
    last_seq = u.last_seq, final_seq = u.final_seq, dedup_key = u.dedup_key, due_at_us = u.due_at_us
FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::int8[], $7::int8[],
            $8::int8[], $9::int8[], $10::text[], $11::int8[])
    AS u(namespace, id, state, version, fields, updated_at_us, last_activity_at_us, last_seq, final_seq,
         dedup_key, due_at_us)
WHERE e.namespace = u.namespace AND e.id = u.id
