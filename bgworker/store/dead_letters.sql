-- Dead letters: the request-row side of `bgworker dlq replay|purge` and the admin console,
-- and the record of every action (bgworker.store.dead_letters; tables in 0002_dlq.sql).

-- name: dlq_lock_request
-- The lease is judged by the database clock, like the reaper does.
SELECT id, status, attempts, replay_count, cancel_requested,
       coalesce(lease_expires_at > now(), false) AS lease_live,
       (event = '{}'::jsonb AND status = 'cancelled') OR scrubbed_at IS NOT NULL AS placeholder
FROM bgworker_requests WHERE id = $1 FOR UPDATE;

-- name: dlq_take_attempts
-- A replay that resets the attempt counter starts numbering at 1 again: the old attempt
-- rows move into the action record instead of being overwritten.
WITH gone AS (
    DELETE FROM bgworker_attempts WHERE request_id = $1 RETURNING *
)
SELECT coalesce(jsonb_agg(to_jsonb(gone) - 'request_id' ORDER BY attempt), '[]'::jsonb)
FROM gone;

-- name: dlq_requeue
-- $3 (forced): any row, its cancel cleared; the lease is dropped too, so an attempt still
-- running is fenced out (its heartbeat and finalize match on the lease token).
UPDATE bgworker_requests
SET status = 'queued',
    attempts = CASE WHEN $2 THEN attempts ELSE 0 END,
    failure_reason = NULL,
    finished_at = NULL,
    next_run_at = NULL,
    progress = NULL,
    cancel_requested = false,
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
    replay_count = replay_count + 1,
    last_replayed_at = now(),
    updated_at = now()
WHERE id = $1 AND (status = 'failed' OR $3)
RETURNING replay_count;

-- name: dlq_mark_republished
-- Replay of a queued or retrying request: its message may be gone, so it is published
-- again; the row keeps its state and attempts, and only counts the replay.
UPDATE bgworker_requests
SET replay_count = replay_count + 1, last_replayed_at = now(), updated_at = now()
WHERE id = $1
RETURNING replay_count;

-- name: dlq_mark_purged
UPDATE bgworker_requests SET dlq_purged_at = now(), updated_at = now() WHERE id = $1
RETURNING status;

-- name: dlq_insert_action
-- params: request_id, letter_key, action, actor, detail, previous_status,
--         previous_attempts, reason, error_class, error, letter_failed_at, attempt_log
-- One row per replay, skip or purge; the Python side builds it from a keyword-constructed
-- dead_letters.Action and binds it by name.
INSERT INTO bgworker_dlq_actions
    (request_id, letter_key, action, actor, detail, previous_status, previous_attempts,
     reason, error_class, error, letter_failed_at, attempt_log)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12);

-- name: dlq_list_actions
SELECT * FROM bgworker_dlq_actions WHERE request_id = $1 ORDER BY at, id;

-- name: dlq_request_marks
SELECT replay_count, last_replayed_at, dlq_purged_at FROM bgworker_requests WHERE id = $1;
