DELETE FROM requests WHERE created_at_us < $1
