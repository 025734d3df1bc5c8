-- Maintenance: liveness, counts, and expiry for `bgworker clean` (bgworker.store.maintenance).

-- name: ping
-- Liveness of the database for health checks: one round trip, touching no table.
SELECT 1;

-- name: count_by_status
SELECT status, count(*) AS n FROM bgworker_requests GROUP BY status ORDER BY status;

-- name: expire_ready
-- Ready files past their expiry plus the leeway (last-minute downloads). Marked expired in
-- the same statement that returns their keys, so no download can start on them afterwards.
-- A file that another live row still serves (dedupe: several requests on the same bytes)
-- comes back without its key, so its bytes stay until the last of them expires.
WITH expired AS (
    UPDATE bgworker_requests r
    SET status = 'expired', updated_at = now()
    FROM (
        SELECT id FROM bgworker_requests
        WHERE status = 'ready' AND expires_at < now() - make_interval(secs => $1)
        ORDER BY expires_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ) due
    WHERE r.id = due.id
    RETURNING r.id, r.storage_key
)
SELECT e.id,
       CASE WHEN EXISTS (
           SELECT 1 FROM bgworker_requests o
           WHERE o.storage_key = e.storage_key AND o.status = 'ready'
             AND o.id NOT IN (SELECT id FROM expired)
       ) THEN NULL ELSE e.storage_key END AS storage_key
FROM expired e;

-- name: expirable_keys
-- What a clean would expire, for `clean --dry-run` (it sizes the files on disk): not a file
-- that a row staying ready still serves.
WITH due AS (
    SELECT id, storage_key FROM bgworker_requests
    WHERE status = 'ready' AND expires_at < now() - make_interval(secs => $1)
)
SELECT CASE WHEN EXISTS (
           SELECT 1 FROM bgworker_requests o
           WHERE o.storage_key = d.storage_key AND o.status = 'ready'
             AND o.id NOT IN (SELECT id FROM due)
       ) THEN NULL ELSE d.storage_key END AS storage_key
FROM due d;

-- name: referenced_keys
SELECT storage_key FROM bgworker_requests WHERE storage_key = ANY($1::text[]);
