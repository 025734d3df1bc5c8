-- Request state: PostgreSQL is the source of truth; RabbitMQ only carries work to workers.
CREATE TABLE bgworker_requests (
    id               uuid PRIMARY KEY,
    file_type        text        NOT NULL,
    status           text        NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'retrying', 'ready', 'failed', 'cancelled', 'expired')),
    event            jsonb       NOT NULL,
    filename         text        NOT NULL,
    content_type     text        NOT NULL,
    requester_id     text,
    requester_email  text,
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer,
    last_error_class text,
    last_error       text,
    failure_reason   text,
    progress         real        CHECK (progress IS NULL OR (progress >= 0 AND progress <= 1)),
    size_bytes       bigint,
    sha256           text,
    storage_key      text,
    requested_at     timestamptz NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    notified_at      timestamptz,
    expires_at       timestamptz,
    next_run_at      timestamptz,
    cancel_requested boolean     NOT NULL DEFAULT false,
    lease_owner      text,
    lease_token      uuid,
    lease_expires_at timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- The reaper scans running rows by lease expiry; status pages list by status and age.
CREATE INDEX bgworker_requests_running_lease ON bgworker_requests (lease_expires_at)
    WHERE status = 'running';
CREATE INDEX bgworker_requests_status ON bgworker_requests (status, received_at);
CREATE INDEX bgworker_requests_expires ON bgworker_requests (expires_at) WHERE status = 'ready';

-- Every attempt, its outcome and (for retries) when the next one is due.
CREATE TABLE bgworker_attempts (
    request_id   uuid        NOT NULL REFERENCES bgworker_requests (id) ON DELETE CASCADE,
    attempt      integer     NOT NULL,
    worker       text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    outcome      text CHECK (outcome IN ('ready', 'retrying', 'failed', 'cancelled', 'lost')),
    error_class  text,
    error        text,
    next_run_at  timestamptz,
    PRIMARY KEY (request_id, attempt)
);

-- Side effects written in the same transaction as the state change that causes them, then
-- carried out by the dispatcher: one row per (request, kind) makes each effect happen once.
CREATE TABLE bgworker_outbox (
    request_id      uuid        NOT NULL REFERENCES bgworker_requests (id) ON DELETE CASCADE,
    kind            text        NOT NULL
        CHECK (kind IN ('email_ready', 'email_failed', 'event_ready', 'event_failed')),
    payload         jsonb       NOT NULL,
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done')),
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    done_at         timestamptz,
    PRIMARY KEY (request_id, kind)
);
CREATE INDEX bgworker_outbox_due ON bgworker_outbox (next_attempt_at) WHERE status = 'pending';
