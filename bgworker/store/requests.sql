-- Requests: intake, claim, heartbeat and the fenced outcomes of an attempt (bgworker.store.requests).
-- A block whose query takes more than four parameters names them in a `-- params:` line
-- ($1, $2, ... in order); the Python side binds them by keyword (bgworker.store.queries.bind).

-- name: insert_invalid_request
-- params: id, file_type, event, failure_reason, error_class, error
-- An event that failed validation but carried a usable id: recorded as failed so the
-- producer can see why. Never overwrites a real request with the same id.
INSERT INTO bgworker_requests
    (id, file_type, status, event, filename, content_type, requested_at, finished_at,
     failure_reason, last_error_class, last_error)
VALUES ($1, $2, 'failed', $3, '', 'application/octet-stream', now(), now(), $4, $5, $6)
ON CONFLICT (id) DO NOTHING
RETURNING id;

-- name: record_and_claim
-- params: id, file_type, event, filename, content_type, requester_id, requester_email,
--         requested_at, max_attempts, worker, lease_seconds, requested_at_set, tenant
-- What a worker runs for each delivery of a request no cap applies to (a capped one:
-- record_and_claim_capped in fairness.sql): the first sighting inserts the row already claimed;
-- a later one takes it if runnable: queued, waiting for a retry, or running under a lease
-- that expired (its worker died). The lease token fences out a worker that lost its lease.
-- The attempt row is written by the same statement. No row back: not runnable (a duplicate
-- delivery, or a cancelled request).
WITH claimed AS (
    INSERT INTO bgworker_requests AS r
        (id, file_type, event, filename, content_type, requester_id, requester_email,
         requested_at, max_attempts, status, attempts, lease_owner, lease_token,
         lease_expires_at, started_at, progress, tenant)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'running', 1, $10, gen_random_uuid(),
            now() + make_interval(secs => $11), now(), 0, $13)
    ON CONFLICT (id) DO UPDATE
    SET status = 'running',
        woken_at = NULL,
        attempts = r.attempts + 1,
        lease_owner = excluded.lease_owner,
        lease_token = gen_random_uuid(),
        lease_expires_at = excluded.lease_expires_at,
        started_at = coalesce(r.started_at, now()),
        next_run_at = NULL,
        progress = 0, progress_done = NULL, progress_total = NULL,
        updated_at = now()
    -- parked: left by caps since lifted (a parked message is acked, so this is the wake's).
    WHERE NOT r.cancel_requested
      AND (r.status IN ('queued', 'retrying', 'parked')
           OR (r.status = 'running' AND r.lease_expires_at < now()))
      -- Only the recorded request may run under its id: a different body published under
      -- it (a conflicting duplicate) claims nothing. requested_at is compared only when the
      -- producer set it ($12): left out, it defaults to the time each copy is parsed.
      AND CASE WHEN $12 THEN r.event = excluded.event
               ELSE (r.event - 'requested_at') = (excluded.event - 'requested_at') END
    RETURNING *
), attempt AS (
    INSERT INTO bgworker_attempts (request_id, attempt, worker)
    SELECT id, attempts, $10 FROM claimed
    ON CONFLICT (request_id, attempt) DO UPDATE SET worker = excluded.worker, started_at = now()
)
-- The whole row: the worker builds the outcome's effects from it (mark_ready's $9).
SELECT * FROM claimed;

-- name: supersede_invalid
-- params: id, file_type, event, filename, content_type, requester_id, requester_email,
--         requested_at, max_attempts, worker, lease_seconds, reasons, tenant
-- A request that failed validation ($12: the reasons that may be superseded), published
-- again under the same id with a valid event: the new event replaces the rejected body and
-- is claimed at once. The rejected version's failure effects are dropped so the new
-- version gets its own FileReady or FileFailed.
WITH claimed AS (
    UPDATE bgworker_requests
    SET file_type = $2, event = $3, filename = $4, content_type = $5, requester_id = $6,
        requester_email = $7, requested_at = $8, max_attempts = $9, tenant = $13,
        status = 'running', attempts = 1, lease_owner = $10, lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => $11), started_at = now(),
        finished_at = NULL, notified_at = NULL, failure_reason = NULL,
        last_error_class = NULL, last_error = NULL, progress = 0, progress_done = NULL,
        progress_total = NULL, next_run_at = NULL,
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

-- name: finish_attempt
-- params: request_id, attempt, outcome, error_class, error, next_run_at
UPDATE bgworker_attempts
SET finished_at = now(), outcome = $3, error_class = $4, error = $5, next_run_at = $6
WHERE request_id = $1 AND attempt = $2;

-- name: heartbeat
-- params: request_id, lease_token, lease_seconds, fraction, done, total, reported
-- Extends the lease while the job runs, and saves the progress last reported ($7: one was
-- reported; its fraction and counts replace the old ones, NULLs included). No row back
-- means the lease is gone (cancelled or taken over): the job must stop without touching
-- anything.
UPDATE bgworker_requests
SET lease_expires_at = now() + make_interval(secs => $3),
    progress = CASE WHEN $7 THEN $4 ELSE progress END,
    progress_done = CASE WHEN $7 THEN $5 ELSE progress_done END,
    progress_total = CASE WHEN $7 THEN $6 ELSE progress_total END,
    updated_at = now()
WHERE id = $1 AND lease_token = $2 AND status = 'running' AND NOT cancel_requested
RETURNING id;

-- name: mark_ready
-- params: request_id, lease_token, size, sha256, storage_key, attempt, done, total,
--         effects, claim_seconds
-- One job; the jobs that finish together run it in one pipelined round trip and one
-- transaction (group commit: bgworker.store.requests). Scalar parameters, not arrays: with
-- arrays (unnest) PostgreSQL re-planned the statement on every call (a custom plan always
-- looked cheaper than the generic one, which assumes 100 elements), which cost more CPU than
-- running it. Fenced on the lease token; no row back means the job is no longer ours. Also
-- closes the attempt $6 in the same statement. $7, $8: the counts the handler reported last
-- (NULL: none), which a short job had no time to save before.
-- $9: the outbox rows of the outcome, [{kind, payload}], written by this statement only when
-- the fenced update took the row, so no transaction around it is needed. The worker builds
-- them ahead from the row as claimed; the two times of the payloads only this statement
-- knows, ready_at and expires_at, are set here from the updated row, in UTC as Python's
-- isoformat() writes them.
-- $10 as insert_outbox's $4 (outbox.sql). The rows written come back in "inserted", with
-- the request's link generation in the row. '[]' writes none (a bundle's part: its effects
-- need the bundle, written after this statement in the same transaction).
WITH ready AS (
    UPDATE bgworker_requests r
    SET status = 'ready',
        size_bytes = $3,
        sha256 = $4,
        storage_key = $5,
        progress = 1,
        -- A handler that reported a total ends with all of it done.
        progress_done = coalesce($8, r.progress_total, $7, r.progress_done),
        progress_total = coalesce($8, r.progress_total),
        finished_at = now(),
        expires_at = now() + make_interval(
            secs => (r.event ->> 'lifetime_seconds')::double precision),
        lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
        last_error_class = NULL, last_error = NULL,
        updated_at = now()
    WHERE r.id = $1 AND r.lease_token = $2 AND r.status = 'running'
      AND NOT r.cancel_requested
    RETURNING r.*
), attempt AS (
    UPDATE bgworker_attempts a
    SET finished_at = now(), outcome = 'ready', error_class = NULL, error = NULL,
        next_run_at = NULL
    FROM ready
    WHERE a.request_id = ready.id AND a.attempt = $6
), inserted AS (
    INSERT INTO bgworker_outbox (request_id, kind, payload, claimed_until, attempts)
    SELECT ready.id, e.kind,
           e.payload || jsonb_build_object(
               'ready_at', to_char(ready.finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
               'expires_at', to_char(ready.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')),
           now() + make_interval(secs => $10::double precision),
           CASE WHEN $10::double precision IS NULL THEN 0 ELSE 1 END
    FROM ready, jsonb_to_recordset($9::jsonb) AS e(kind text, payload jsonb)
    ON CONFLICT (request_id, kind) DO NOTHING
    RETURNING kind, payload, attempts
)
SELECT ready.*,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'kind', i.kind, 'payload', i.payload, 'attempts', i.attempts)), '[]')
        FROM inserted i) AS inserted
FROM ready;

-- name: mark_retrying
-- params: request_id, lease_token, error_class, error, next_run_at
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
-- params: request_id, lease_token, failure_reason, error_class, error
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
WHERE id = $1 AND status IN ('queued', 'parked', 'running', 'retrying')
RETURNING id;

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

-- name: drop_attempt
-- A released attempt (shutdown) is not counted: its row goes with the release.
DELETE FROM bgworker_attempts WHERE request_id = $1 AND attempt = $2;

-- name: request_cancel
-- Queued, parked or retrying requests are cancelled at once; a running one is flagged, and its
-- worker stops the handler at its next lease renewal. $2: the requester's address when the
-- "my files" page asks (another address's request is left alone), NULL for operators.
UPDATE bgworker_requests
SET cancel_requested = true,
    status = CASE WHEN status = 'running' THEN status ELSE 'cancelled' END,
    finished_at = CASE WHEN status = 'running' THEN finished_at ELSE now() END,
    updated_at = now()
WHERE id = $1 AND status IN ('queued', 'parked', 'running', 'retrying')
  AND ($2::text IS NULL OR (lower(requester_email) = $2 AND requester_email IS NOT NULL))
RETURNING status;

-- name: get_request
SELECT * FROM bgworker_requests WHERE id = $1;

-- name: list_attempts
SELECT * FROM bgworker_attempts WHERE request_id = $1 ORDER BY attempt;

-- name: cancel_or_placeholder
-- A producer's cancel (CancelRequested, DELETE /requests/{id}), as request_cancel, and one
-- that comes before its request records a placeholder: a cancelled row with an empty event
-- (and cancel_requested), which record_and_claim never claims, so the request is never
-- built when it comes. Returns the status afterwards and whether the placeholder was made;
-- no row back: the id is recorded and no longer cancellable (its status is read then).
INSERT INTO bgworker_requests AS r
    (id, file_type, status, event, filename, content_type, requested_at, finished_at,
     cancel_requested)
VALUES ($1, '', 'cancelled', '{}', '', 'application/octet-stream', now(), now(), true)
ON CONFLICT (id) DO UPDATE
SET cancel_requested = true,
    status = CASE WHEN r.status = 'running' THEN r.status ELSE 'cancelled' END,
    finished_at = CASE WHEN r.status = 'running' THEN r.finished_at ELSE now() END,
    updated_at = now()
WHERE r.status IN ('queued', 'parked', 'running', 'retrying')
RETURNING status, (xmax = 0) AS placeholder;

-- name: request_status
SELECT status, cancel_requested FROM bgworker_requests WHERE id = $1;
