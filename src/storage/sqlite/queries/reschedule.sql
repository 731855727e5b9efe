-- After a machine definition: the due time of every entity of a kind in a state that
-- schedules one ($4: measured from the last activity instead of entering the state; $5:
-- how long, in microseconds).
UPDATE entities
SET due_at_us = (CASE WHEN $4 THEN last_activity_at_us ELSE updated_at_us END) + $5
WHERE namespace = $1 AND kind = $2 AND state = $3
