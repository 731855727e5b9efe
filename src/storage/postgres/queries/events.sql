-- Up to $4 events after seq $3, in order, stopping before the event that would take the
-- payload bytes returned past $5 (the first is always returned). The page is chosen from the
-- payloads' lengths alone, so a long tape or a large event is never read beyond it.
WITH page AS (
    SELECT seq, row_number() OVER (ORDER BY seq) AS n, sum(len) OVER (ORDER BY seq) AS upto
    FROM (
        SELECT seq, octet_length(payload) AS len FROM events
        WHERE namespace = $1 AND entity_id = $2 AND seq > $3 ORDER BY seq LIMIT $4
    ) head
)
SELECT e.seq, e.type, e.content_type, e.payload, e.state, e.created_at_us
FROM page JOIN events e ON e.namespace = $1 AND e.entity_id = $2 AND e.seq = page.seq
WHERE page.n = 1 OR page.upto <= $5
ORDER BY e.seq
