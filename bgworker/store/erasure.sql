-- Erasure of one person's data (bgworker.store.erasure, `bgworker forget`). A subject is
-- matched by its lower-cased address: the request column, or the event's requester.email
-- where the column is empty (an invalid event recorded as failed keeps only its raw body).

-- name: erase_find_requester
-- The requests of requester $1 (lower-cased) and their files, locked: a worker's fenced
-- update of one of them waits for the erasure and then finds its lease gone.
SELECT id, storage_key FROM bgworker_requests
WHERE id IN (
    SELECT id FROM bgworker_requests WHERE lower(requester_email) = $1
    UNION
    SELECT id FROM bgworker_requests
    WHERE requester_email IS NULL AND status = 'failed'
      AND lower(event #>> '{requester,email}') = $1)
ORDER BY id
FOR UPDATE;

-- name: erase_pending_requester
-- Requests of $1 accepted but not recorded by a worker yet: POST /requests' records and
-- the producer outbox's rows. Their messages may still be in a queue.
SELECT id FROM bgworker_front_door WHERE lower(event #>> '{requester,email}') = $1
UNION
SELECT request_id FROM bgworker_producer_outbox WHERE lower(event #>> '{requester,email}') = $1;

-- name: erase_find_tenant
-- The requests that count against tenant $1 (events.tenant_of: the event's tenant, else
-- its requester's id), locked. Rows recorded before fair share have tenant '' unless they
-- were live then: those are found by their event.
SELECT id, storage_key FROM bgworker_requests
WHERE id IN (
    SELECT id FROM bgworker_requests WHERE tenant = $1
    UNION
    SELECT id FROM bgworker_requests
    WHERE tenant = '' AND coalesce(event ->> 'tenant', event #>> '{requester,id}') = $1)
ORDER BY id
FOR UPDATE;

-- name: erase_pending_tenant
-- Requests of tenant $1 accepted but not recorded by a worker yet (as erase_pending_requester).
SELECT id FROM bgworker_front_door
WHERE coalesce(event ->> 'tenant', event #>> '{requester,id}') = $1
UNION
SELECT request_id FROM bgworker_producer_outbox
WHERE coalesce(event ->> 'tenant', event #>> '{requester,id}') = $1;

-- name: erase_dependents
-- What hangs off the requests $1: attempt history (error texts), effects (email payloads
-- name the address), dead-letter action records (errors, attempt logs), the front door's
-- and the producer outbox's copies of the event; the bundles they are parts of lose their
-- event and requester (and, cancelled, send no email). Returns the effects removed.
WITH a AS (DELETE FROM bgworker_attempts WHERE request_id = ANY($1::uuid[])),
     b AS (UPDATE bgworker_bundles
           SET event = '{}', requester_id = NULL, requester_email = NULL, tenant = '',
               cancel_requested = true
           WHERE id IN (SELECT bundle_id FROM bgworker_requests
                        WHERE id = ANY($1::uuid[]) AND bundle_id IS NOT NULL)),
     d AS (DELETE FROM bgworker_dlq_actions WHERE request_id = ANY($1::uuid[])),
     f AS (DELETE FROM bgworker_front_door WHERE id = ANY($1::uuid[])),
     p AS (DELETE FROM bgworker_producer_outbox WHERE request_id = ANY($1::uuid[])),
     o AS (DELETE FROM bgworker_outbox WHERE request_id = ANY($1::uuid[]) RETURNING 1)
SELECT count(*) FROM o;

-- name: erase_rows
-- Each request $1 becomes a placeholder, as a cancel that came first does: an empty event,
-- no requester, no file, no error text, cancel_requested (so no delivery still queued can
-- ever claim it and build it again), scrubbed_at set. In progress: cancelled (a running
-- worker loses its lease and deletes its file); ready: expired (the file is deleted).
UPDATE bgworker_requests
SET status = CASE WHEN status IN ('queued', 'parked', 'running', 'retrying') THEN 'cancelled'
                  WHEN status = 'ready' THEN 'expired' ELSE status END,
    finished_at = coalesce(finished_at, now()),
    event = '{}', file_type = '', filename = '', content_type = 'application/octet-stream',
    requester_id = NULL, requester_email = NULL, tenant = '',
    last_error_class = NULL, last_error = NULL,
    size_bytes = NULL, sha256 = NULL, storage_key = NULL, fingerprint = NULL,
    reused_from = NULL, progress_done = NULL, progress_total = NULL,
    cancel_requested = true,
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
    scrubbed_at = now(), updated_at = now()
WHERE id = ANY($1::uuid[]);

-- name: erase_placeholders
-- Requests $1 not recorded yet get a scrubbed placeholder: their queued message is then
-- acknowledged unbuilt when it comes.
INSERT INTO bgworker_requests
    (id, file_type, status, event, filename, content_type, requested_at, finished_at,
     cancel_requested, scrubbed_at)
SELECT id, '', 'cancelled', '{}', '', 'application/octet-stream', now(), now(), true, now()
FROM unnest($1::uuid[]) AS id
ON CONFLICT (id) DO NOTHING;

-- name: erase_record
-- params: kind, salt, hash, actor, requests, files, effects, dead_letters, pending, schedules
INSERT INTO bgworker_erasures
    (subject_kind, subject_salt, subject_hash, actor, requests, files, effects, dead_letters,
     pending, schedules)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
RETURNING id, at;

-- name: erase_audit
SELECT * FROM bgworker_erasures ORDER BY id;

-- name: erase_schedules_requester
-- The schedules of requester $1 (lower-cased), with their recorded periods (cascade): no
-- period of theirs is published after the erasure.
WITH gone AS (
    DELETE FROM bgworker_schedules
    WHERE lower(requester_email) = $1 OR lower(template #>> '{requester,email}') = $1
    RETURNING 1)
SELECT count(*) FROM gone;

-- name: erase_schedules_tenant
WITH gone AS (DELETE FROM bgworker_schedules WHERE tenant = $1 RETURNING 1)
SELECT count(*) FROM gone;
