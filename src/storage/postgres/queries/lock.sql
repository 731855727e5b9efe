-- The batch's locks (see baton_lock), then the clock, read once they are held.
SELECT baton_lock($1::int8[], $2::bool[], $3::bool), baton_now_us($4::int8)
