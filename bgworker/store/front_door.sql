-- The HTTP front door's record of accepted events (bgworker.store.front_door, migration 0011).

-- name: front_door_reserve
-- The first POST of an id wins the row; a later one gets nothing back and reads it.
-- $3: its tenant, which quotas count (events.tenant_of).
INSERT INTO bgworker_front_door (id, event, tenant)
VALUES ($1, $2, $3)
ON CONFLICT (id) DO NOTHING
RETURNING id;

-- name: front_door_get
SELECT event, published_at FROM bgworker_front_door WHERE id = $1;

-- name: front_door_lock
-- Held by the POST that publishes, until the publish is confirmed and recorded: a racing POST
-- of the same id waits here, then finds it published (or, if that one failed, publishes).
SELECT event, published_at FROM bgworker_front_door WHERE id = $1 FOR UPDATE;

-- name: front_door_published
UPDATE bgworker_front_door SET published_at = now() WHERE id = $1;

-- name: front_door_prune
-- For `bgworker clean`: records no POST needs any more. Once a worker has recorded the
-- request, its row answers a repeated POST (unless it is the failed record of an invalid
-- body, $1, which a valid event supersedes); an unpublished record ($2 seconds old: its
-- POST answered 503 and was never retried) frees its id. $3: count only (--dry-run).
WITH gone AS (
    SELECT d.id
    FROM bgworker_front_door d
    LEFT JOIN bgworker_requests r ON r.id = d.id
    WHERE (r.id IS NOT NULL
           AND NOT (r.status = 'failed' AND r.failure_reason = ANY($1::text[])))
       OR (r.id IS NULL AND d.published_at IS NULL
           AND d.created_at < now() - make_interval(secs => $2))
), deleted AS (
    DELETE FROM bgworker_front_door WHERE id IN (SELECT id FROM gone) AND NOT $3
)
SELECT count(*) FROM gone;
