-- Retention (bgworker.store.retention, `bgworker clean`): each query prunes one batch.
-- Every one takes the same four parameters: $1 how long to keep (seconds after a request
-- ended), $2 the batch size, $3 and $4 where the previous batch stopped (the time and a
-- text key that orders rows of the same time: group commit ends many requests at one
-- now()), so a run never reads the same rows twice and rows it skipped, locked, wait for
-- the next run. Each returns the rows it looked at (time and key, in order; fewer than $2:
-- done) with, on each, how many it pruned. Batches of requests come from
-- bgworker_ended_batch (migration 0014): ended when neither waiting nor running, at
-- finished_at or when the file expired if later (index bgworker_requests_ended). SKIP
-- LOCKED: a row a worker or an operator holds is left for the next run, never waited for;
-- each batch is its own short transaction.

-- name: retention_criteria
-- What the event said beyond routing (criteria, description, file name), the error text
-- (a handler's exception may quote its input) and the dedupe fingerprint (a hash of the
-- criteria), on the row.
WITH batch AS MATERIALIZED (SELECT * FROM bgworker_ended_batch($1, $2, $3, $4)),
done AS (
    UPDATE bgworker_requests r
    SET event = r.event - 'criteria' - 'description' - 'filename',
        filename = r.file_type, last_error = NULL, fingerprint = NULL,
        scrubbed_at = coalesce(r.scrubbed_at, now())
    FROM batch
    WHERE r.id = batch.id
      AND (r.event ?| array['criteria', 'description', 'filename'] OR r.last_error IS NOT NULL
           OR r.fingerprint IS NOT NULL)
    RETURNING 1
)
SELECT ended, key, (SELECT count(*) FROM done) AS pruned FROM batch ORDER BY ended, key;

-- name: retention_addresses
-- Who asked: the requester's address and id, on the row and in the event (language and
-- time zone stay: they say nothing of who), and the tenant where it is that id (fair
-- share's default: a request naming no tenant counts against its requester).
WITH batch AS MATERIALIZED (SELECT * FROM bgworker_ended_batch($1, $2, $3, $4)),
done AS (
    UPDATE bgworker_requests r
    SET event = r.event #- '{requester,email}' #- '{requester,id}',
        requester_email = NULL, requester_id = NULL,
        tenant = CASE WHEN r.tenant = r.requester_id THEN '' ELSE r.tenant END,
        scrubbed_at = coalesce(r.scrubbed_at, now())
    FROM batch
    WHERE r.id = batch.id
      AND (r.requester_email IS NOT NULL OR r.requester_id IS NOT NULL
           OR coalesce(r.event -> 'requester' ?| array['email', 'id'], false))
    RETURNING 1
)
SELECT ended, key, (SELECT count(*) FROM done) AS pruned FROM batch ORDER BY ended, key;

-- name: retention_bundle_addresses
-- Who asked for a bundle (its row's address and id, and the event's), as for its parts
-- (retention_addresses) and after as long: erasure finds a bundle through its parts'
-- addresses, so once theirs are gone the bundle's must not stay. Ended: finished, or
-- created when it never finished (cancelled); none of its parts in progress.
WITH batch AS (
    SELECT b.id, coalesce(b.finished_at, b.created_at) AS ended, b.id::text AS key
    FROM bgworker_bundles b
    WHERE coalesce(b.finished_at, b.created_at) < now() - make_interval(secs => $1)
      AND (coalesce(b.finished_at, b.created_at), b.id::text) > ($3, $4)
      AND NOT EXISTS (
          SELECT 1 FROM bgworker_requests r
          WHERE r.bundle_id = b.id AND r.status IN ('queued', 'parked', 'running', 'retrying'))
    ORDER BY coalesce(b.finished_at, b.created_at), b.id::text
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), done AS (
    UPDATE bgworker_bundles d
    SET event = d.event #- '{requester,email}' #- '{requester,id}',
        requester_email = NULL, requester_id = NULL,
        tenant = CASE WHEN d.tenant = d.requester_id THEN '' ELSE d.tenant END
    FROM batch
    WHERE d.id = batch.id
      AND (d.requester_email IS NOT NULL OR d.requester_id IS NOT NULL
           OR coalesce(d.event -> 'requester' ?| array['email', 'id'], false))
    RETURNING 1
)
SELECT ended, key, (SELECT count(*) FROM done) AS pruned FROM batch ORDER BY ended, key;

-- name: retention_attempts
-- The attempt history (workers, times, error texts) of ended requests.
WITH batch AS MATERIALIZED (SELECT * FROM bgworker_ended_batch($1, $2, $3, $4)),
done AS (
    DELETE FROM bgworker_attempts a USING batch WHERE a.request_id = batch.id RETURNING 1
)
SELECT ended, key, (SELECT count(*) FROM done) AS pruned FROM batch ORDER BY ended, key;

-- name: retention_outbox
-- Effects performed or given up (their payloads: an email's recipient and link), by when
-- they finished; pending ones are still work and stay.
WITH batch AS (
    SELECT request_id, kind, coalesce(done_at, created_at) AS ended,
           request_id::text || kind AS key
    FROM bgworker_outbox
    WHERE status <> 'pending'
      AND coalesce(done_at, created_at) < now() - make_interval(secs => $1)
      AND (coalesce(done_at, created_at), request_id::text || kind) > ($3, $4)
    ORDER BY coalesce(done_at, created_at), request_id::text || kind
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), done AS (
    DELETE FROM bgworker_outbox o USING batch
    WHERE o.request_id = batch.request_id AND o.kind = batch.kind
    RETURNING 1
)
SELECT ended, key, (SELECT count(*) FROM done) AS pruned FROM batch ORDER BY ended, key;

-- name: retention_producer_outbox
-- The producer outbox's rows the relay has published (each holds a whole event).
WITH batch AS (
    SELECT request_id, published_at AS ended, request_id::text AS key
    FROM bgworker_producer_outbox
    WHERE published_at < now() - make_interval(secs => $1)
      AND (published_at, request_id::text) > ($3, $4)
    ORDER BY published_at, request_id::text
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), done AS (
    DELETE FROM bgworker_producer_outbox p USING batch
    WHERE p.request_id = batch.request_id
    RETURNING 1
)
SELECT ended, key, (SELECT count(*) FROM done) AS pruned FROM batch ORDER BY ended, key;

-- name: retention_dlq_actions
-- The records of dead-letter replays and purges (the letter's error, the attempt log), by
-- age, as the letters themselves.
WITH batch AS (
    SELECT id, at AS ended, id::text AS key FROM bgworker_dlq_actions
    WHERE at < now() - make_interval(secs => $1) AND (at, id::text) > ($3, $4)
    ORDER BY at, id::text
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), done AS (
    DELETE FROM bgworker_dlq_actions d USING batch WHERE d.id = batch.id RETURNING 1
)
SELECT ended, key, (SELECT count(*) FROM done) AS pruned FROM batch ORDER BY ended, key;

-- name: retention_rows
-- The request rows themselves, with whatever still hangs off them (a file its row still
-- named expired rows_days ago; unreferenced now, the orphan step deletes it). After this
-- a copy of the request published again would be built again: keep rows longer than any
-- message can wait (dead letters included).
WITH batch AS MATERIALIZED (SELECT * FROM bgworker_ended_batch($1, $2, $3, $4)),
attempts AS (
    DELETE FROM bgworker_attempts a USING batch WHERE a.request_id = batch.id
), effects AS (
    DELETE FROM bgworker_outbox o USING batch WHERE o.request_id = batch.id
), actions AS (
    DELETE FROM bgworker_dlq_actions d USING batch WHERE d.request_id = batch.id
), door AS (
    DELETE FROM bgworker_front_door f USING batch WHERE f.id = batch.id
), done AS (
    DELETE FROM bgworker_requests r USING batch WHERE r.id = batch.id RETURNING 1
)
SELECT ended, key, (SELECT count(*) FROM done) AS pruned FROM batch ORDER BY ended, key;

-- name: retention_bundles
-- Bundle rows (bgworker_bundles: the BundleRequested event, the requester) none of whose
-- parts is left, ended (finished, or created when it never finished: cancelled) before $1.
-- A bundle still naming a part waits for the part's row (retention_rows, which runs first):
-- deleting it would set the part's bundle_id NULL (ON DELETE SET NULL), locking, and maybe
-- waiting for, a request row, and end the ZIP download of parts whose files still live.
WITH batch AS (
    SELECT b.id, coalesce(b.finished_at, b.created_at) AS ended, b.id::text AS key
    FROM bgworker_bundles b
    WHERE coalesce(b.finished_at, b.created_at) < now() - make_interval(secs => $1)
      AND (coalesce(b.finished_at, b.created_at), b.id::text) > ($3, $4)
      AND NOT EXISTS (SELECT 1 FROM bgworker_requests r WHERE r.bundle_id = b.id)
    ORDER BY coalesce(b.finished_at, b.created_at), b.id::text
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), done AS (
    DELETE FROM bgworker_bundles d USING batch WHERE d.id = batch.id RETURNING 1
)
SELECT ended, key, (SELECT count(*) FROM done) AS pruned FROM batch ORDER BY ended, key;

-- name: retention_schedule_runs
-- A schedule's published periods (each holds its whole event) by when they were published.
-- Kept: unpublished ones (still work: schedule_runs_take), those whose request is still in
-- progress (its email looks its schedule up here: schedule_of_request), and the latest
-- period of a schedule not ended (the missed-period rule reads the schedule's own
-- next_run_at and last_period, not this table; kept as the at-most-once key of the period
-- the schedule last fired, one row a schedule).
WITH batch AS (
    SELECT sr.schedule_id, sr.period, sr.published_at AS ended, sr.request_id::text AS key
    FROM bgworker_schedule_runs sr
    JOIN bgworker_schedules s ON s.id = sr.schedule_id
    WHERE sr.published_at < now() - make_interval(secs => $1)
      AND (sr.published_at, sr.request_id::text) > ($3, $4)
      AND (s.status = 'ended' OR s.last_period IS DISTINCT FROM sr.period)
      AND NOT EXISTS (
          SELECT 1 FROM bgworker_requests r
          WHERE r.id = sr.request_id AND r.status IN ('queued', 'parked', 'running', 'retrying'))
    ORDER BY sr.published_at, sr.request_id::text
    LIMIT $2
    FOR UPDATE OF sr SKIP LOCKED
), done AS (
    DELETE FROM bgworker_schedule_runs d USING batch
    WHERE d.schedule_id = batch.schedule_id AND d.period = batch.period
    RETURNING 1
)
SELECT ended, key, (SELECT count(*) FROM done) AS pruned FROM batch ORDER BY ended, key;

-- name: retention_schedules
-- Schedules ended (end date, unsubscribed, operator) before $1 (updated_at: set when it
-- ended, never after), with their periods (ON DELETE CASCADE). One with a period still
-- needed (unpublished, or its request in progress) waits: the cascade would otherwise take
-- (or wait for) it.
WITH batch AS (
    SELECT s.id, s.updated_at AS ended, s.id::text AS key
    FROM bgworker_schedules s
    WHERE s.status = 'ended'
      AND s.updated_at < now() - make_interval(secs => $1)
      AND (s.updated_at, s.id::text) > ($3, $4)
      AND NOT EXISTS (
          SELECT 1 FROM bgworker_schedule_runs sr
          LEFT JOIN bgworker_requests r ON r.id = sr.request_id
          WHERE sr.schedule_id = s.id
            AND (sr.published_at IS NULL
                 OR r.status IN ('queued', 'parked', 'running', 'retrying')))
    ORDER BY s.updated_at, s.id::text
    LIMIT $2
    FOR UPDATE OF s SKIP LOCKED
), done AS (
    DELETE FROM bgworker_schedules d USING batch WHERE d.id = batch.id RETURNING 1
)
SELECT ended, key, (SELECT count(*) FROM done) AS pruned FROM batch ORDER BY ended, key;
