SELECT baton_now_us($1::int8)
