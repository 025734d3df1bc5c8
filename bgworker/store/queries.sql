-- Named queries, parsed once by bgworker.store.queries. One block per store method.

-- name: insert_request
-- A request enters PostgreSQL the first time a worker sees its event; redeliveries and
-- duplicate publishes hit the primary key and change nothing.
INSERT INTO bgworker_requests
    (id, file_type, event, filename, content_type, requester_id, requester_email,
     requested_at, max_attempts)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (id) DO NOTHING;

-- name: insert_invalid_request
-- An event that failed validation but carried a usable id: recorded as failed so the
-- producer can see why. Never overwrites a real request with the same id.
INSERT INTO bgworker_requests
    (id, file_type, status, event, filename, content_type, requested_at, finished_at,
     failure_reason, last_error_class, last_error)
VALUES ($1, $2, 'failed', $3, '', 'application/octet-stream', now(), now(), $4, $5, $6)
ON CONFLICT (id) DO NOTHING
RETURNING id;

-- name: record_and_claim
-- What a worker runs for each delivery: the first sighting inserts the row already claimed;
-- a later one takes it if runnable: queued, waiting for a retry, or running under a lease
-- that expired (its worker died). The lease token fences out a worker that lost its lease.
-- The attempt row is written by the same statement. No row back: not runnable (a duplicate
-- delivery, or a cancelled request).
WITH claimed AS (
    INSERT INTO bgworker_requests AS r
        (id, file_type, event, filename, content_type, requester_id, requester_email,
         requested_at, max_attempts, status, attempts, lease_owner, lease_token,
         lease_expires_at, started_at, progress)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'running', 1, $10, gen_random_uuid(),
            now() + make_interval(secs => $11), now(), 0)
    ON CONFLICT (id) DO UPDATE
    SET status = 'running',
        attempts = r.attempts + 1,
        lease_owner = excluded.lease_owner,
        lease_token = gen_random_uuid(),
        lease_expires_at = excluded.lease_expires_at,
        started_at = coalesce(r.started_at, now()),
        next_run_at = NULL,
        progress = 0,
        updated_at = now()
    WHERE NOT r.cancel_requested
      AND (r.status IN ('queued', 'retrying')
           OR (r.status = 'running' AND r.lease_expires_at < now()))
      -- Only the recorded request may run under its id: a different body published under
      -- it (a conflicting duplicate) claims nothing. requested_at is compared only when the
      -- producer set it ($12): left out, it defaults to the time each copy is parsed.
      AND CASE WHEN $12 THEN r.event = excluded.event
               ELSE (r.event - 'requested_at') = (excluded.event - 'requested_at') END
    RETURNING id, attempts, lease_token, max_attempts
), attempt AS (
    INSERT INTO bgworker_attempts (request_id, attempt, worker)
    SELECT id, attempts, $10 FROM claimed
    ON CONFLICT (request_id, attempt) DO UPDATE SET worker = excluded.worker, started_at = now()
)
SELECT id, attempts, lease_token, max_attempts FROM claimed;

-- name: finish_attempt
UPDATE bgworker_attempts
SET finished_at = now(), outcome = $3, error_class = $4, error = $5, next_run_at = $6
WHERE request_id = $1 AND attempt = $2;

-- name: heartbeat
-- Extends the lease while the job runs; no row back means the lease is gone (cancelled or
-- taken over), and the job must stop without touching anything.
UPDATE bgworker_requests
SET lease_expires_at = now() + make_interval(secs => $3),
    progress = coalesce($4, progress),
    updated_at = now()
WHERE id = $1 AND lease_token = $2 AND status = 'running' AND NOT cancel_requested
RETURNING id;

-- name: mark_ready
-- Also closes attempt $6 in the same statement (one round trip fewer).
WITH ready AS (
    UPDATE bgworker_requests
    SET status = 'ready',
        size_bytes = $3,
        sha256 = $4,
        storage_key = $5,
        progress = 1,
        finished_at = now(),
        expires_at = now() + make_interval(
            secs => (event ->> 'lifetime_seconds')::double precision),
        lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
        last_error_class = NULL, last_error = NULL,
        updated_at = now()
    WHERE id = $1 AND lease_token = $2 AND status = 'running' AND NOT cancel_requested
    RETURNING *
), attempt AS (
    UPDATE bgworker_attempts
    SET finished_at = now(), outcome = 'ready', error_class = NULL, error = NULL,
        next_run_at = NULL
    WHERE request_id = (SELECT id FROM ready) AND attempt = $6
)
SELECT * FROM ready;

-- name: mark_retrying
UPDATE bgworker_requests
SET status = 'retrying',
    last_error_class = $3,
    last_error = $4,
    next_run_at = $5,
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
    updated_at = now()
WHERE id = $1 AND lease_token = $2 AND status = 'running' AND NOT cancel_requested
RETURNING id;

-- name: mark_failed
UPDATE bgworker_requests
SET status = 'failed',
    failure_reason = $3,
    last_error_class = $4,
    last_error = $5,
    finished_at = now(),
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
    updated_at = now()
WHERE id = $1 AND lease_token = $2 AND status = 'running' AND NOT cancel_requested
RETURNING *;

-- name: mark_cancelled
UPDATE bgworker_requests
SET status = 'cancelled',
    finished_at = now(),
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
    updated_at = now()
WHERE id = $1 AND status IN ('queued', 'running', 'retrying')
RETURNING id;

-- name: release_request
-- Hand a running job back (graceful shutdown ran out of time): queued again, its message
-- republished by the caller in the same transaction.
UPDATE bgworker_requests
SET status = 'queued',
    attempts = greatest(attempts - 1, 0),
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
    updated_at = now()
WHERE id = $1 AND lease_token = $2 AND status = 'running' AND NOT cancel_requested
RETURNING event;

-- name: cancel_claimed
-- Cancellation wins: the fenced outcomes above (ready, retrying, failed, released) refuse a
-- row with a pending cancel, and the attempt that holds the lease ends it here instead.
UPDATE bgworker_requests
SET status = 'cancelled',
    finished_at = now(),
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
    updated_at = now()
WHERE id = $1 AND lease_token = $2 AND status = 'running' AND cancel_requested
RETURNING id;

-- name: supersede_invalid
-- A request that failed validation ($12: the reasons that may be superseded), published
-- again under the same id with a valid event: the new event replaces the rejected body and
-- is claimed at once. The rejected version's failure effects are dropped so the new
-- version gets its own FileReady or FileFailed.
WITH claimed AS (
    UPDATE bgworker_requests
    SET file_type = $2, event = $3, filename = $4, content_type = $5, requester_id = $6,
        requester_email = $7, requested_at = $8, max_attempts = $9,
        status = 'running', attempts = 1, lease_owner = $10, lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => $11), started_at = now(),
        finished_at = NULL, notified_at = NULL, failure_reason = NULL,
        last_error_class = NULL, last_error = NULL, progress = 0, next_run_at = NULL,
        received_at = now(), updated_at = now()
    WHERE id = $1 AND status = 'failed' AND failure_reason = ANY($12::text[])
      AND NOT cancel_requested
    RETURNING id, attempts, lease_token, max_attempts
), dropped AS (
    DELETE FROM bgworker_outbox WHERE request_id IN (SELECT id FROM claimed)
), attempt AS (
    INSERT INTO bgworker_attempts (request_id, attempt, worker)
    SELECT id, attempts, $10 FROM claimed
    ON CONFLICT (request_id, attempt) DO UPDATE SET worker = excluded.worker, started_at = now()
)
SELECT id, attempts, lease_token, max_attempts FROM claimed;

-- name: request_cancel
-- Queued or retrying requests are cancelled at once; a running one is flagged, and its
-- worker stops the handler at the next heartbeat.
UPDATE bgworker_requests
SET cancel_requested = true,
    status = CASE WHEN status = 'running' THEN status ELSE 'cancelled' END,
    finished_at = CASE WHEN status = 'running' THEN finished_at ELSE now() END,
    updated_at = now()
WHERE id = $1 AND status IN ('queued', 'running', 'retrying')
RETURNING status;

-- name: get_request
SELECT * FROM bgworker_requests WHERE id = $1;

-- name: list_attempts
SELECT * FROM bgworker_attempts WHERE request_id = $1 ORDER BY attempt;

-- name: expired_leases
-- Rows whose worker stopped heartbeating. Locked so two reapers never requeue the same one.
SELECT id, event, cancel_requested, attempts, max_attempts, lease_owner
FROM bgworker_requests
WHERE status = 'running' AND lease_expires_at < now()
ORDER BY lease_expires_at
LIMIT $1
FOR UPDATE SKIP LOCKED;

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
-- row nobody claimed for $1 seconds, or a retrying row $1 seconds past its next run, has
-- lost its message (dropped at a delivery limit, lost in a broker failure, removed from the
-- dead-letter queue): the caller republishes it. At most once per $1 seconds per row
-- (recovered_at); a message that was only slow turns into a duplicate, which claiming
-- makes harmless.
SELECT id, event, status FROM bgworker_requests
WHERE ((status = 'queued' AND updated_at < now() - make_interval(secs => $1))
       OR (status = 'retrying' AND next_run_at < now() - make_interval(secs => $1)))
  AND (recovered_at IS NULL OR recovered_at < now() - make_interval(secs => $1))
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
WHERE status IN ('queued', 'retrying') AND cancel_requested
RETURNING id;

-- name: lose_attempt
UPDATE bgworker_attempts
SET finished_at = now(), outcome = 'lost', error = 'lease expired: worker ' || $3 || ' stopped'
WHERE request_id = $1 AND attempt = $2 AND finished_at IS NULL;

-- name: insert_outbox
-- Every effect of one state change in one statement: kinds $2 and payloads $3, in pairs.
-- With $4 (seconds) the rows start claimed by the inserting worker, which performs them
-- right after the commit: no separate claim round trip. NULL leaves them to the sweep.
INSERT INTO bgworker_outbox (request_id, kind, payload, claimed_until, attempts)
SELECT $1, e.kind, e.payload, now() + make_interval(secs => $4::double precision),
       CASE WHEN $4::double precision IS NULL THEN 0 ELSE 1 END
FROM unnest($2::text[], $3::jsonb[]) AS e (kind, payload)
ON CONFLICT (request_id, kind) DO NOTHING
RETURNING request_id, kind, payload, attempts;

-- name: claim_outbox_due
-- Due effects, claimed for a while so a second dispatcher skips them; a dispatcher that
-- dies mid-send leaves a claim that simply runs out.
UPDATE bgworker_outbox o
SET claimed_until = now() + make_interval(secs => $2), attempts = o.attempts + 1
FROM (
    SELECT request_id, kind FROM bgworker_outbox
    WHERE status = 'pending' AND next_attempt_at <= now()
      AND (claimed_until IS NULL OR claimed_until < now())
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
) due
WHERE o.request_id = due.request_id AND o.kind = due.kind
RETURNING o.request_id, o.kind, o.payload, o.attempts;

-- name: outbox_done
WITH done AS (
    UPDATE bgworker_outbox
    SET status = 'done', done_at = now(), claimed_until = NULL, last_error = NULL
    WHERE request_id = $1 AND kind = $2
    RETURNING request_id, kind
)
UPDATE bgworker_requests r
SET notified_at = now()
FROM done
WHERE r.id = done.request_id AND done.kind IN ('email_ready', 'email_failed');

-- name: outbox_retry
UPDATE bgworker_outbox
SET claimed_until = NULL,
    last_error = $3,
    next_attempt_at = now() + make_interval(secs => $4)
WHERE request_id = $1 AND kind = $2;

-- name: list_outbox
SELECT * FROM bgworker_outbox WHERE request_id = $1 ORDER BY kind;

-- name: count_by_status
SELECT status, count(*) AS n FROM bgworker_requests GROUP BY status ORDER BY status;

-- name: expire_ready
-- Ready files past their expiry plus the leeway (last-minute downloads). Marked expired in
-- the same statement that returns their keys, so no download can start on them afterwards.
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
RETURNING r.id, r.storage_key;

-- name: count_expirable
SELECT count(*) FROM bgworker_requests
WHERE status = 'ready' AND expires_at < now() - make_interval(secs => $1);

-- name: referenced_keys
SELECT storage_key FROM bgworker_requests WHERE storage_key = ANY($1::text[]);
