-- Leases: renewed for every job of a worker at once, from a thread of its own
-- (bgworker.store.leases).

-- name: renew_leases
-- params: worker, request_ids, lease_tokens, lease_seconds
-- One statement for all the worker's running jobs ($2 and $3 in pairs). Fenced exactly as
-- each job's own outcomes are: only a row still running under this worker's owner name
-- and lease token, without a pending cancel, is extended. The tokens that come back are
-- the leases still held; a job whose token is missing was cancelled or taken over.
UPDATE bgworker_requests r
SET lease_expires_at = now() + make_interval(secs => $4),
    updated_at = now()
FROM unnest($2::uuid[], $3::uuid[]) AS held (id, lease_token)
WHERE r.id = held.id AND r.lease_token = held.lease_token AND r.lease_owner = $1
  AND r.status = 'running' AND NOT r.cancel_requested
RETURNING r.lease_token;
