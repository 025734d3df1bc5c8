-- Schedules (bgworker.store.schedules; tables from migration 0018): created, leased by a
-- worker, fired once per period into bgworker_schedule_runs, published from there.

-- name: schedule_create
-- params: id, cron, timezone, ends_at, template, file_type, requester_id, requester_email,
--         tenant, next_run_at
-- Idempotent by id: creating a schedule twice is one schedule (no row back the second time).
INSERT INTO bgworker_schedules
    (id, cron, timezone, ends_at, template, file_type, requester_id, requester_email, tenant,
     next_run_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (id) DO NOTHING
RETURNING id;

-- name: schedule_renew
-- params: worker, lease_seconds
-- Every schedule this worker still holds (its lease not expired, so no other worker can
-- have taken it): extended, whatever their number.
UPDATE bgworker_schedules
SET lease_expires_at = now() + make_interval(secs => $2)
WHERE lease_owner = $1 AND lease_expires_at >= now() AND status = 'active'
RETURNING id, lease_token, next_run_at <= now() AS due;

-- name: schedule_claim
-- params: worker, lease_seconds, batch
-- Take up to $3 active schedules nobody holds (or whose holder's lease expired: it died),
-- the soonest due first. SKIP LOCKED: two workers never take one schedule; each taking
-- gets a new token, which fences out a worker that lost its lease (schedule_lock_due).
WITH free AS (
    SELECT id FROM bgworker_schedules
    WHERE status = 'active' AND (lease_expires_at IS NULL OR lease_expires_at < now())
    ORDER BY next_run_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE bgworker_schedules s
SET lease_token = gen_random_uuid(),
    lease_owner = $1,
    lease_expires_at = now() + make_interval(secs => $2)
FROM free
WHERE s.id = free.id
RETURNING s.id, s.lease_token, s.next_run_at <= now() AS due;

-- name: schedule_lock_due
-- A held, due schedule locked for its firing transaction, with PostgreSQL's clock (every
-- worker reads the same one). No row: the lease was lost, or it is not due any more.
SELECT s.*, now() AS db_now FROM bgworker_schedules s
WHERE s.id = $1 AND s.lease_token = $2 AND s.lease_expires_at > now()
  AND s.status = 'active' AND s.next_run_at <= now()
FOR UPDATE;

-- name: schedule_record_run
-- One row per period: a period already recorded records nothing (no row back).
INSERT INTO bgworker_schedule_runs (schedule_id, period, request_id, event)
VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING
RETURNING request_id;

-- name: schedule_advance
-- params: id, lease_token, next_run_at, last_period, missed, ended
UPDATE bgworker_schedules
SET next_run_at = CASE WHEN $6::boolean THEN NULL ELSE $3::timestamptz END,
    last_period = coalesce($4::timestamptz, last_period),
    runs = runs + CASE WHEN $4::timestamptz IS NULL THEN 0 ELSE 1 END,
    skipped = skipped + $5::integer,
    status = CASE WHEN $6::boolean THEN 'ended' ELSE status END,
    ended_reason = CASE WHEN $6::boolean THEN 'end_date' ELSE ended_reason END,
    updated_at = now()
WHERE id = $1 AND lease_token = $2;

-- name: schedule_runs_take
-- Recorded periods not yet confirmed by the broker, any schedule's (a worker that died
-- after recording one leaves it here for the others), locked for the publishing transaction.
SELECT request_id, event FROM bgworker_schedule_runs
WHERE published_at IS NULL
ORDER BY created_at
LIMIT $1
FOR UPDATE SKIP LOCKED;

-- name: schedule_runs_published
UPDATE bgworker_schedule_runs SET published_at = now() WHERE request_id = ANY($1::uuid[]);

-- name: schedule_release
-- A worker that stops lets its schedules go at once rather than when their leases expire.
UPDATE bgworker_schedules
SET lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE lease_owner = $1;

-- name: schedule_get
SELECT * FROM bgworker_schedules WHERE id = $1;

-- name: schedule_list
-- The newest first; $1: only this status (NULL: all).
SELECT * FROM bgworker_schedules
WHERE $1::text IS NULL OR status = $1
ORDER BY created_at DESC
LIMIT $2;

-- name: schedule_pause
UPDATE bgworker_schedules
SET status = 'paused', lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
    updated_at = now()
WHERE id = $1 AND status = 'active'
RETURNING id;

-- name: schedule_resume
-- $2: the next fire time after now (periods while paused are not made up for).
UPDATE bgworker_schedules
SET status = 'active', next_run_at = $2, updated_at = now()
WHERE id = $1 AND status = 'paused'
RETURNING id;

-- name: schedule_end
-- Ended for good ($2: why: unsubscribed, operator); no more periods, not resumable.
UPDATE bgworker_schedules
SET status = 'ended', ended_reason = $2, next_run_at = NULL,
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = now()
WHERE id = $1 AND status <> 'ended'
RETURNING id;

-- name: schedule_of_request
-- The schedule a request was made for, if any (its email carries the unsubscribe link).
SELECT schedule_id FROM bgworker_schedule_runs WHERE request_id = $1;
