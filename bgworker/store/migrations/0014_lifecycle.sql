-- A request's whole life (issue 24): producers' cancels, retention, erasure and the
-- producer-side outbox.
--
-- scrubbed_at: when `bgworker clean` (retention) or `bgworker forget` (erasure) removed what
-- the event said (criteria, description, the requester's address). A scrubbed row no longer
-- holds the body a redelivery would be compared with, so a redelivery of it is a duplicate,
-- never a conflicting one (which would copy the body into the dead-letter queue).
ALTER TABLE bgworker_requests ADD COLUMN scrubbed_at timestamptz;

-- Retention counts from the end of a request: when it finished, or when its file expires
-- if that is later (greatest() skips a NULL). Only ended requests have finished_at.
CREATE INDEX bgworker_requests_ended
    ON bgworker_requests ((greatest(finished_at, expires_at)))
    WHERE finished_at IS NOT NULL;

-- Erasure finds a person's requests by address, case-insensitively.
CREATE INDEX bgworker_requests_requester_email
    ON bgworker_requests (lower(requester_email))
    WHERE requester_email IS NOT NULL;

-- The outbox rows retention prunes: performed or given up (which has no done_at), by when.
CREATE INDEX bgworker_outbox_finished
    ON bgworker_outbox ((coalesce(done_at, created_at))) WHERE status <> 'pending';

-- Every erasure, without the address: a salted SHA-256 of it (lower-cased), which confirms
-- an erasure to whoever holds the address, and what was removed.
CREATE TABLE bgworker_erasures (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    subject_kind text NOT NULL CHECK (subject_kind IN ('requester', 'tenant')),
    subject_salt bytea NOT NULL,
    subject_hash text NOT NULL CHECK (subject_hash ~ '^[0-9a-f]{64}$'),
    actor        text NOT NULL,
    requests     integer NOT NULL DEFAULT 0,
    files        integer NOT NULL DEFAULT 0,
    effects      integer NOT NULL DEFAULT 0,
    dead_letters integer NOT NULL DEFAULT 0,
    pending      integer NOT NULL DEFAULT 0
);

-- The producer-side outbox (bgworker.producing.outbox): a producer sharing this database
-- inserts its FileRequested here in its own transaction; the relay publishes committed rows
-- and marks them. A rolled-back transaction leaves no row, so nothing is published.
CREATE TABLE bgworker_producer_outbox (
    request_id   uuid PRIMARY KEY,
    event        jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX bgworker_producer_outbox_unpublished
    ON bgworker_producer_outbox (created_at) WHERE published_at IS NULL;
CREATE INDEX bgworker_producer_outbox_published
    ON bgworker_producer_outbox (published_at) WHERE published_at IS NOT NULL;

-- Retention prunes action records of dead letters by age.
CREATE INDEX bgworker_dlq_actions_at ON bgworker_dlq_actions (at);

-- One batch of ended requests for retention (bgworker.store.retention): those that ended
-- more than keep_seconds ago (when they finished, or when their file expired if later;
-- never one waiting or running), after (after_at, after_key) in that order, locked, skipping
-- rows someone else holds. Every retention stage on requests starts from it.
CREATE FUNCTION bgworker_ended_batch(
    keep_seconds double precision, lim integer, after_at timestamptz, after_key text
) RETURNS TABLE (id uuid, ended timestamptz, key text)
LANGUAGE sql AS $$
    SELECT r.id, greatest(r.finished_at, r.expires_at), r.id::text
    FROM bgworker_requests r
    WHERE r.finished_at IS NOT NULL
      AND greatest(r.finished_at, r.expires_at) < now() - make_interval(secs => keep_seconds)
      AND (greatest(r.finished_at, r.expires_at), r.id::text) > (after_at, after_key)
      AND r.status NOT IN ('queued', 'running', 'retrying')
    ORDER BY greatest(r.finished_at, r.expires_at), r.id::text
    LIMIT lim
    FOR UPDATE SKIP LOCKED
$$;
