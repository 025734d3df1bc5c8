-- Outbox: the side effects of a state change, one row per (request, kind)
-- (bgworker.store.outbox).

-- name: insert_outbox
-- One effect of a state change: request id $1, kind $2, payload $3. The effects of one
-- transaction run it in one pipelined round trip (asyncpg ``fetchmany``); scalar parameters
-- keep the generic plan (see mark_ready).
-- With $4 (seconds) the row starts claimed by the inserting worker, which performs it right
-- after the commit: no separate claim round trip. NULL leaves it to the sweep.
-- The request's link generation comes back with it: the links it carries are signed under
-- it without another round trip.
WITH inserted AS (
    INSERT INTO bgworker_outbox (request_id, kind, payload, claimed_until, attempts)
    VALUES ($1, $2, $3, now() + make_interval(secs => $4::double precision),
            CASE WHEN $4::double precision IS NULL THEN 0 ELSE 1 END)
    ON CONFLICT (request_id, kind) DO NOTHING
    RETURNING request_id, kind, payload, attempts
)
SELECT i.request_id, i.kind, i.payload, i.attempts, r.link_generation
FROM inserted i JOIN bgworker_requests r ON r.id = i.request_id;

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
RETURNING o.request_id, o.kind, o.payload, o.attempts,
          (SELECT r.link_generation FROM bgworker_requests r WHERE r.id = o.request_id);

-- name: outbox_done
-- An effect performed: request id $1, kind $2. The calls that finish together run it in one
-- pipelined round trip and one transaction (group commit: bgworker.store.outbox).
WITH done AS (
    UPDATE bgworker_outbox o
    SET status = 'done', done_at = now(), claimed_until = NULL, last_error = NULL
    WHERE o.request_id = $1 AND o.kind = $2
    RETURNING o.request_id, o.kind
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

-- name: outbox_give_up
-- A webhook after its last attempt, or refused: kept with its reason, never claimed again.
UPDATE bgworker_outbox
SET status = 'given_up', claimed_until = NULL, last_error = $3
WHERE request_id = $1 AND kind = $2;
