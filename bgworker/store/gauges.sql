-- What the worker's gauges sample periodically (bgworker.store.gauges, bgworker.sampler).

-- name: outbox_backlog
-- Effects not done yet by kind, with the age of the oldest: a growing age means emails or
-- events are stuck (SMTP or the broker refusing), whatever the count.
SELECT kind,
       count(*) AS pending,
       extract(epoch FROM now() - min(created_at))::float8 AS oldest_seconds
FROM bgworker_outbox
WHERE status = 'pending'
GROUP BY kind
ORDER BY kind;
