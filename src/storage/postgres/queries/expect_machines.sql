SELECT baton_expect_machines($1::text[], $2::text[], $3::int8[], $4::int8[])
