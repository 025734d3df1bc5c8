-- Dead-letter queue actions (`bgworker dlq replay|purge`, the admin console): every replay,
-- skip and purge, who did it, and what the request looked like before.
CREATE TABLE bgworker_dlq_actions (
    id                bigserial   PRIMARY KEY,
    -- No foreign key: a letter may name a request this database never recorded.
    request_id        uuid,
    letter_key        text        NOT NULL,
    action            text        NOT NULL CHECK (action IN ('replay', 'skip', 'purge')),
    actor             text        NOT NULL,
    detail            text        NOT NULL DEFAULT '',
    previous_status   text,
    previous_attempts integer,
    reason            text,
    error_class       text,
    error             text,
    letter_failed_at  timestamptz,
    -- The attempt rows a replay with reset attempts cleared, kept here as history.
    attempt_log       jsonb,
    at                timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bgworker_dlq_actions_request ON bgworker_dlq_actions (request_id, at);

-- On the request row itself: how often it was replayed, and when its letter was purged.
ALTER TABLE bgworker_requests
    ADD COLUMN replay_count     integer NOT NULL DEFAULT 0,
    ADD COLUMN last_replayed_at timestamptz,
    ADD COLUMN dlq_purged_at    timestamptz;
