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
