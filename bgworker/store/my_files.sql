-- The requester's "my files" page (bgworker.store.my_files): every query names the
-- requester's address (lower case, as the requests' email index), so a page can only ever
-- read or change requests made with the address its link was sent to.

-- name: my_files_list
-- The live files of an address: waiting, being built, ready and not expired, and failed or
-- cancelled ones that ended within the last `recent` seconds; newest first.
-- params: email, recent, limit
SELECT * FROM bgworker_requests
WHERE lower(requester_email) = $1 AND requester_email IS NOT NULL
  AND (status IN ('queued', 'parked', 'running', 'retrying')
       OR (status = 'ready' AND expires_at > now())
       OR (status IN ('failed', 'cancelled')
           AND finished_at > now() - make_interval(secs => $2::double precision)))
ORDER BY requested_at DESC, id
LIMIT $3;

-- name: my_files_own
-- One request of the address, with its email's last sending: NULL row when the id is
-- another address's or unknown (the page cannot tell them apart, nor can the caller).
-- params: request_id, email
SELECT r.id, r.status, r.cancel_requested,
       (SELECT max(o.done_at) FROM bgworker_outbox o
        WHERE o.request_id = r.id AND o.kind IN ('email_ready', 'email_failed')) AS mailed_at
FROM bgworker_requests r
WHERE r.id = $1 AND lower(r.requester_email) = $2 AND r.requester_email IS NOT NULL;

-- name: my_files_ask
-- POST /my-files: queue the email carrying the page's link on the address's newest request,
-- unless one is pending or was sent within `interval` seconds (the rate limit). No row
-- back when the address has no request or is limited; the caller answers the same anyway.
-- params: email, interval
WITH newest AS (
    SELECT id, requester_email, event -> 'requester' AS requester
    FROM bgworker_requests
    WHERE lower(requester_email) = $1 AND requester_email IS NOT NULL
    ORDER BY requested_at DESC, id
    LIMIT 1
), recent AS (
    SELECT 1 FROM bgworker_outbox o JOIN bgworker_requests r ON r.id = o.request_id
    WHERE o.kind = 'email_my_files' AND lower(r.requester_email) = $1
      AND r.requester_email IS NOT NULL
      AND (o.status = 'pending'
           OR o.done_at > now() - make_interval(secs => $2::double precision))
)
INSERT INTO bgworker_outbox AS o (request_id, kind, payload)
SELECT id, 'email_my_files', jsonb_build_object(
    'to', requester_email,
    'language', coalesce(requester ->> 'language', 'en'),
    'timezone', coalesce(requester ->> 'timezone', 'UTC'))
FROM newest
WHERE NOT EXISTS (SELECT 1 FROM recent)
ON CONFLICT (request_id, kind) DO UPDATE
SET status = 'pending', attempts = 0, last_error = NULL, claimed_until = NULL,
    next_attempt_at = now(), done_at = NULL,
    payload = excluded.payload || jsonb_build_object(
        'resend', coalesce((o.payload ->> 'resend')::integer, 0) + 1)
RETURNING o.request_id;

-- name: my_files_bundles
-- The live bundles of an address, newest first: found through their parts (the requests'
-- email index; a part carries its bundle's address), live while a part is in progress or
-- a ready part is not past its lifetime. The bundle's own address must be the page's too
-- (an erased bundle has none). done: parts no longer in progress; ready: downloadable ones.
-- The ids as an array: the bundles are then read by their primary key (a join on the parts
-- made the planner read the whole bundles table, which `clean` never prunes).
-- params: email, limit
SELECT b.id, b.event, b.requester_id, b.requester_email, b.tenant, b.parts, b.created_at,
       b.finished_at, b.cancel_requested,
       count(r.id) FILTER (
           WHERE r.status NOT IN ('queued', 'parked', 'running', 'retrying')) AS done,
       count(r.id) FILTER (WHERE r.status = 'ready' AND r.expires_at > now()) AS ready
FROM bgworker_bundles b
JOIN bgworker_requests r ON r.bundle_id = b.id
WHERE b.id = ANY(ARRAY(
        SELECT bundle_id FROM bgworker_requests
        WHERE lower(requester_email) = $1 AND requester_email IS NOT NULL
          AND bundle_id IS NOT NULL
          AND (status IN ('queued', 'parked', 'running', 'retrying')
               OR (status = 'ready' AND expires_at > now()))))
  AND lower(b.requester_email) = $1 AND b.requester_email IS NOT NULL
GROUP BY b.id
ORDER BY b.created_at DESC, b.id
LIMIT $2;

-- name: my_files_schedules
-- The active and paused schedules of an address (the requester of their FileRequested
-- template), newest first (bgworker_schedules_requester_email).
-- params: email, limit
SELECT * FROM bgworker_schedules
WHERE lower(requester_email) = $1 AND requester_email IS NOT NULL
  AND status IN ('active', 'paused')
ORDER BY created_at DESC, id
LIMIT $2;

-- name: my_files_own_schedule
-- One schedule of the address, its status: NULL row for another address's or an unknown id.
-- params: schedule_id, email
SELECT status FROM bgworker_schedules
WHERE id = $1 AND lower(requester_email) = $2 AND requester_email IS NOT NULL;
