-- Dedupe by content (bgworker.store.dedupe): reuse a ready file of the same fingerprint, or
-- wait while one is being built. Every step runs under a transaction-scoped advisory lock
-- on the fingerprint, so of identical requests deciding at once exactly one leads.

-- name: dedupe_lock
-- hashtextextended: a 64-bit key from the fingerprint; a collision only serialises two
-- unrelated decisions, it never merges them (the queries below compare the fingerprint).
SELECT pg_advisory_xact_lock(hashtextextended($1, 0));

-- name: dedupe_reuse
-- params: request_id, lease_token, fingerprint, window_seconds, attempt
-- The newest original build of the fingerprint that finished within the window and is
-- still ready, locked FOR SHARE so cleanup cannot expire it (and delete its bytes) before
-- this commits. The claimed row ends ready on the same bytes, fenced on its lease token; its
-- expiry is never later than the source's, so the link does not outlive the bytes. Reused
-- rows are never sources: freshness counts from the build, not from the last reuse.
WITH source AS (
    SELECT id, size_bytes, sha256, storage_key, progress_done, progress_total, expires_at
    FROM bgworker_requests
    WHERE fingerprint = $3 AND id <> $1 AND status = 'ready' AND reused_from IS NULL
      AND storage_key IS NOT NULL AND expires_at > now()
      AND finished_at > now() - make_interval(secs => $4)
    ORDER BY finished_at DESC
    LIMIT 1
    FOR SHARE
), reused AS (
    UPDATE bgworker_requests r
    SET status = 'ready',
        fingerprint = $3,
        reused_from = s.id,
        size_bytes = s.size_bytes,
        sha256 = s.sha256,
        storage_key = s.storage_key,
        progress = 1, progress_done = s.progress_done, progress_total = s.progress_total,
        finished_at = now(),
        expires_at = least(
            s.expires_at,
            now() + make_interval(secs => (r.event ->> 'lifetime_seconds')::double precision)),
        lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
        last_error_class = NULL, last_error = NULL,
        updated_at = now()
    FROM source s
    WHERE r.id = $1 AND r.lease_token = $2 AND r.status = 'running' AND NOT r.cancel_requested
    RETURNING r.*
), attempt AS (
    UPDATE bgworker_attempts
    SET finished_at = now(), outcome = 'ready', error_class = NULL, error = NULL,
        next_run_at = NULL
    WHERE request_id = (SELECT id FROM reused) AND attempt = $5
)
SELECT * FROM reused;

-- name: dedupe_builder
-- Another request of the fingerprint being built now: running under a live lease. Not one
-- waiting for its retry or in the queue: waiters hold worker slots, and enough of them
-- could keep such a one from ever running again; a waiter builds instead, and the other
-- waits for it when it comes back. Not one whose lease expired (its worker died): a waiter
-- builds, and the dead one waits once requeued. The caller's own row sheds the fingerprint
-- it may carry from an earlier attempt, so only a row that builds carries it (the lead
-- below sets it again in the same transaction when there is nobody to wait for).
WITH shed AS (
    UPDATE bgworker_requests SET fingerprint = NULL
    WHERE id = $2 AND fingerprint IS NOT NULL AND status = 'running'
)
-- A source that became ready after dedupe_reuse looked (this is another statement, with
-- its own snapshot; mark_ready takes no lock) counts too: the next look reuses it.
SELECT id FROM bgworker_requests
WHERE fingerprint = $1 AND id <> $2 AND NOT cancel_requested
  AND ((status = 'running' AND lease_expires_at > now())
       OR (status = 'ready' AND reused_from IS NULL AND expires_at > now()
           AND finished_at > now() - make_interval(secs => $3)))
ORDER BY received_at
LIMIT 1;

-- name: dedupe_lead
-- This request builds: it carries the fingerprint from now on, so identical ones wait for it.
UPDATE bgworker_requests
SET fingerprint = $3, updated_at = now()
WHERE id = $1 AND lease_token = $2 AND status = 'running' AND NOT cancel_requested
RETURNING id;
