-- Requests by status, newest change first: the admin console's requests page
-- (bgworker.store.listing).

-- name: list_requests_by_status
SELECT id, file_type, status, filename, attempts, max_attempts, progress, last_error_class,
       last_error, failure_reason, received_at, started_at, finished_at, next_run_at,
       replay_count, updated_at
FROM bgworker_requests
WHERE status = $1
ORDER BY updated_at DESC
LIMIT $2;

-- name: search_requests
-- The console's search: every filter optional (NULL: any), newest change first, one page
-- plus one row so the caller knows whether a next page exists. Requester matches the
-- requester's id or email exactly.
-- params: request_id, requester, file_type, status, limit, offset
SELECT id, file_type, status, filename, requester_id, requester_email, attempts,
       max_attempts, progress, last_error_class, received_at, updated_at
FROM bgworker_requests
WHERE ($1::uuid IS NULL OR id = $1)
  AND ($2::text IS NULL OR requester_id = $2 OR requester_email = $2)
  AND ($3::text IS NULL OR file_type = $3)
  AND ($4::text IS NULL OR status = $4)
ORDER BY updated_at DESC, id
LIMIT $5 OFFSET $6;

-- name: request_effects
-- A request's outbox rows (emails, events) for its console page.
SELECT kind, status, attempts, last_error, next_attempt_at, created_at, done_at
FROM bgworker_outbox
WHERE request_id = $1
ORDER BY created_at, kind;
