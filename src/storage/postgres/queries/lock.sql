SELECT baton_lock($1::int8[], $2::bool[], $3::bool)
