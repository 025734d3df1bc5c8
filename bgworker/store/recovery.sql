-- Recovery: the lease reaper and the sweep for waiting requests whose message went missing
-- (bgworker.store.recovery).

-- name: expired_leases
-- Rows whose worker stopped heartbeating. Locked so two reapers never requeue the same one.
SELECT id, event, cancel_requested, attempts, max_attempts, lease_owner
FROM bgworker_requests
WHERE status = 'running' AND lease_expires_at < now()
ORDER BY lease_expires_at
LIMIT $1
FOR UPDATE SKIP LOCKED;

-- name: lose_attempt
UPDATE bgworker_attempts
SET finished_at = now(), outcome = 'lost', error = 'lease expired: worker ' || $3 || ' stopped'
WHERE request_id = $1 AND attempt = $2 AND finished_at IS NULL;

-- name: requeue_expired
UPDATE bgworker_requests
SET status = 'queued',
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
    updated_at = now()
WHERE id = $1 AND status = 'running'
RETURNING id;

-- name: fail_expired
-- A request whose every attempt ended with its worker gone (a handler that crashes or
-- exhausts the process): failed, so it cannot loop forever.
UPDATE bgworker_requests
SET status = 'failed',
    failure_reason = 'worker_lost',
    last_error_class = 'WorkerLostError',
    last_error = $2,
    finished_at = now(),
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
    updated_at = now()
WHERE id = $1 AND status = 'running'
RETURNING *;

-- name: stalled_requests
-- Recovery: PostgreSQL is the source of truth for every non-terminal request. A queued
-- row nobody claimed for $1 seconds, or a retrying row $3 seconds past its next run, has
-- lost its message (dropped at a delivery limit, lost in a broker failure, removed from the
-- dead-letter queue, held by a retry queue's dead-letter worker): the caller republishes
-- it. At most once per that time per row (recovered_at); a message that was only slow
-- turns into a duplicate, which claiming makes harmless.
SELECT id, event, status FROM bgworker_requests
WHERE ((status = 'queued' AND updated_at < now() - make_interval(secs => $1)
        AND (recovered_at IS NULL OR recovered_at < now() - make_interval(secs => $1)))
       OR (status = 'retrying' AND next_run_at < now() - make_interval(secs => $3)
           AND (recovered_at IS NULL OR recovered_at < now() - make_interval(secs => $3))))
  AND NOT cancel_requested
ORDER BY updated_at
LIMIT $2
FOR UPDATE SKIP LOCKED;

-- name: mark_recovered
UPDATE bgworker_requests SET recovered_at = now(), recoveries = recoveries + 1
WHERE id = $1;

-- name: cancel_waiting
-- Waiting rows with a pending cancel (left by an older version, or by a replay) end
-- cancelled: nothing will ever claim them.
UPDATE bgworker_requests
SET status = 'cancelled', finished_at = now(), next_run_at = NULL, updated_at = now()
WHERE status IN ('queued', 'parked', 'retrying') AND cancel_requested
RETURNING id;
