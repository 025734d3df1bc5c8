-- Links: the per-request link generation behind `bgworker revoke`, and `bgworker resend`
-- (bgworker.store.links).

-- name: link_generation
SELECT link_generation FROM bgworker_requests WHERE id = $1;

-- name: get_request_for_link
-- The row a link names, with its link generation: one round trip per download.
SELECT * FROM bgworker_requests WHERE id = $1;

-- name: revoke_links
-- Every token issued so far carries a lower generation from now on; the file stays.
UPDATE bgworker_requests
SET link_generation = link_generation + 1, updated_at = now()
WHERE id = $1
RETURNING link_generation;

-- name: resend_email
-- Re-arm the request's email for the dispatcher's next sweep: once per resend, retried
-- like any effect. The ready email only while the file is ready and not past its expiry
-- (its link would answer 410), the failure email once the request failed. `resend` in
-- the payload counts them (a fresh Message-ID each time). Only a row already done: a
-- pending one is about to be sent anyway. The "my files" page passes the requester's
-- address ($2, NULL for operators: any) and its rate limit ($3 seconds since the last
-- sending, NULL: none).
UPDATE bgworker_outbox o
SET status = 'pending', attempts = 0, last_error = NULL, claimed_until = NULL,
    next_attempt_at = now(), done_at = NULL,
    payload = o.payload || jsonb_build_object(
        'resend', coalesce((o.payload ->> 'resend')::integer, 0) + 1)
FROM bgworker_requests r
WHERE o.request_id = $1 AND r.id = o.request_id AND o.status = 'done'
  AND ($2::text IS NULL OR (lower(r.requester_email) = $2 AND r.requester_email IS NOT NULL))
  AND ($3::double precision IS NULL
       OR o.done_at <= now() - make_interval(secs => $3::double precision))
  AND ((o.kind = 'email_ready' AND r.status = 'ready' AND r.expires_at > now())
       OR (o.kind = 'email_failed' AND r.status = 'failed'))
RETURNING o.kind;
