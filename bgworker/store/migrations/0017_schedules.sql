-- Schedules (issue 23, part 2): a recurring request kept here and published by whichever
-- worker holds the schedule's lease (bgworker.worker.schedules); no scheduler process.
--
-- template: the FileRequested to publish each period, without id and requested_at (the
-- period fills them). timezone: the requester's, in which the cron expression is read.
-- next_run_at: the next fire time (UTC), NULL once ended. The lease (owner, token,
-- expiry) says which worker publishes it; a worker killed while holding it loses it when it
-- expires, and the next worker to claim it publishes the next period.
CREATE TABLE bgworker_schedules (
    id               uuid PRIMARY KEY,
    cron             text NOT NULL,
    timezone         text NOT NULL,
    ends_at          timestamptz,
    template         jsonb NOT NULL,
    file_type        text NOT NULL,
    requester_id     text,
    requester_email  text,
    tenant           text NOT NULL DEFAULT '',
    status           text NOT NULL DEFAULT 'active'
                     CHECK (status IN ('active', 'paused', 'ended')),
    ended_reason     text,
    next_run_at      timestamptz,
    last_period      timestamptz,
    runs             integer NOT NULL DEFAULT 0,
    skipped          integer NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_token      uuid,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- What the workers claim: active schedules, the ones due first.
CREATE INDEX bgworker_schedules_due ON bgworker_schedules (next_run_at) WHERE status = 'active';

-- A requester's "my files" page and erasure find an address's schedules case-insensitively.
CREATE INDEX bgworker_schedules_requester_email
    ON bgworker_schedules (lower(requester_email))
    WHERE requester_email IS NOT NULL;

-- One row per published period: its primary key is what makes a period publish at most
-- one request, whatever crashes; published_at NULL until the broker confirmed it.
CREATE TABLE bgworker_schedule_runs (
    schedule_id  uuid NOT NULL REFERENCES bgworker_schedules (id) ON DELETE CASCADE,
    period       timestamptz NOT NULL,
    request_id   uuid NOT NULL UNIQUE,
    event        jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    PRIMARY KEY (schedule_id, period)
);
CREATE INDEX bgworker_schedule_runs_unpublished
    ON bgworker_schedule_runs (created_at) WHERE published_at IS NULL;
