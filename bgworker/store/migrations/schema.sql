-- Today's schema of bgworker's PostgreSQL tables, for reading: generated from the migrations
-- beside it by scripts/schema_sql.py (make schema-sql), checked by make test.
-- Never applied: `bgworker migrate` applies the migrations.

CREATE FUNCTION public.bgworker_cap_room(p_id uuid, p_tenant text, p_file_type text, p_tenant_cap integer, p_file_type_cap integer) RETURNS boolean
    LANGUAGE sql STABLE
    AS $$
    SELECT (p_tenant_cap >= 1000000000
            OR (SELECT count(*) FROM bgworker_requests b
                WHERE b.tenant = p_tenant AND b.status = 'running'
                  AND b.lease_expires_at >= now() AND b.id <> p_id) < p_tenant_cap)
       AND (p_file_type_cap >= 1000000000
            OR (SELECT count(*) FROM bgworker_requests b
                WHERE b.file_type = p_file_type AND b.status = 'running'
                  AND b.lease_expires_at >= now() AND b.id <> p_id) < p_file_type_cap)
$$;

CREATE FUNCTION public.bgworker_ended_batch(keep_seconds double precision, lim integer, after_at timestamp with time zone, after_key text) RETURNS TABLE(id uuid, ended timestamp with time zone, key text)
    LANGUAGE sql
    AS $$
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

CREATE TABLE public.bgworker_admin_login_failures (
    id bigint NOT NULL,
    client text NOT NULL,
    failed_at timestamp with time zone DEFAULT now() NOT NULL
);

ALTER TABLE public.bgworker_admin_login_failures ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.bgworker_admin_login_failures_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE public.bgworker_admin_secrets (
    name text NOT NULL,
    value bytea NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE public.bgworker_admin_sessions (
    token_hash bytea NOT NULL,
    username text NOT NULL,
    csrf text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone NOT NULL
);

CREATE TABLE public.bgworker_attempts (
    request_id uuid NOT NULL,
    attempt integer NOT NULL,
    worker text NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone,
    outcome text,
    error_class text,
    error text,
    next_run_at timestamp with time zone,
    CONSTRAINT bgworker_attempts_outcome_check CHECK ((outcome = ANY (ARRAY['ready'::text, 'retrying'::text, 'failed'::text, 'cancelled'::text, 'lost'::text])))
);

CREATE TABLE public.bgworker_bundles (
    id uuid NOT NULL,
    event jsonb NOT NULL,
    requester_id text,
    requester_email text,
    tenant text DEFAULT ''::text NOT NULL,
    parts integer NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone,
    cancel_requested boolean DEFAULT false NOT NULL,
    CONSTRAINT bgworker_bundles_parts_check CHECK ((parts > 0))
);

CREATE TABLE public.bgworker_dlq_actions (
    id bigint NOT NULL,
    request_id uuid,
    letter_key text NOT NULL,
    action text NOT NULL,
    actor text NOT NULL,
    detail text DEFAULT ''::text NOT NULL,
    previous_status text,
    previous_attempts integer,
    reason text,
    error_class text,
    error text,
    letter_failed_at timestamp with time zone,
    attempt_log jsonb,
    at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT bgworker_dlq_actions_action_check CHECK ((action = ANY (ARRAY['replay'::text, 'skip'::text, 'purge'::text])))
);

CREATE SEQUENCE public.bgworker_dlq_actions_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.bgworker_dlq_actions_id_seq OWNED BY public.bgworker_dlq_actions.id;

CREATE TABLE public.bgworker_erasures (
    id bigint NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL,
    subject_kind text NOT NULL,
    subject_salt bytea NOT NULL,
    subject_hash text NOT NULL,
    actor text NOT NULL,
    requests integer DEFAULT 0 NOT NULL,
    files integer DEFAULT 0 NOT NULL,
    effects integer DEFAULT 0 NOT NULL,
    dead_letters integer DEFAULT 0 NOT NULL,
    pending integer DEFAULT 0 NOT NULL,
    schedules integer DEFAULT 0 NOT NULL,
    CONSTRAINT bgworker_erasures_subject_hash_check CHECK ((subject_hash ~ '^[0-9a-f]{64}$'::text)),
    CONSTRAINT bgworker_erasures_subject_kind_check CHECK ((subject_kind = ANY (ARRAY['requester'::text, 'tenant'::text])))
);

ALTER TABLE public.bgworker_erasures ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.bgworker_erasures_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE public.bgworker_front_door (
    id uuid NOT NULL,
    event jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    published_at timestamp with time zone,
    tenant text DEFAULT ''::text NOT NULL
);

CREATE TABLE public.bgworker_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE public.bgworker_outbox (
    request_id uuid NOT NULL,
    kind text NOT NULL,
    payload jsonb NOT NULL,
    status text DEFAULT 'pending'::text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    last_error text,
    next_attempt_at timestamp with time zone DEFAULT now() NOT NULL,
    claimed_until timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    done_at timestamp with time zone,
    CONSTRAINT bgworker_outbox_kind_check CHECK ((kind = ANY (ARRAY['email_ready'::text, 'email_failed'::text, 'event_ready'::text, 'event_failed'::text, 'webhook_ready'::text, 'webhook_failed'::text, 'email_bundle'::text, 'email_my_files'::text]))),
    CONSTRAINT bgworker_outbox_status_check CHECK ((status = ANY (ARRAY['pending'::text, 'done'::text, 'given_up'::text])))
);

CREATE TABLE public.bgworker_producer_outbox (
    request_id uuid NOT NULL,
    event jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    published_at timestamp with time zone
);

CREATE TABLE public.bgworker_requests (
    id uuid NOT NULL,
    file_type text NOT NULL,
    status text DEFAULT 'queued'::text NOT NULL,
    event jsonb NOT NULL,
    filename text NOT NULL,
    content_type text NOT NULL,
    requester_id text,
    requester_email text,
    attempts integer DEFAULT 0 NOT NULL,
    max_attempts integer,
    last_error_class text,
    last_error text,
    failure_reason text,
    progress double precision,
    size_bytes bigint,
    sha256 text,
    storage_key text,
    requested_at timestamp with time zone NOT NULL,
    received_at timestamp with time zone DEFAULT now() NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    notified_at timestamp with time zone,
    expires_at timestamp with time zone,
    next_run_at timestamp with time zone,
    cancel_requested boolean DEFAULT false NOT NULL,
    lease_owner text,
    lease_token uuid,
    lease_expires_at timestamp with time zone,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    replay_count integer DEFAULT 0 NOT NULL,
    last_replayed_at timestamp with time zone,
    dlq_purged_at timestamp with time zone,
    recovered_at timestamp with time zone,
    recoveries integer DEFAULT 0 NOT NULL,
    link_generation integer DEFAULT 0 NOT NULL,
    progress_done bigint,
    progress_total bigint,
    fingerprint text,
    reused_from uuid,
    tenant text DEFAULT ''::text NOT NULL,
    woken_at timestamp with time zone,
    scrubbed_at timestamp with time zone,
    bundle_id uuid,
    bundle_index integer,
    crc32 bigint,
    CONSTRAINT bgworker_requests_bundle_index_check CHECK (((bundle_index IS NULL) OR (bundle_index >= 0))),
    CONSTRAINT bgworker_requests_crc32_check CHECK (((crc32 IS NULL) OR ((crc32 >= 0) AND (crc32 <= '4294967295'::bigint)))),
    CONSTRAINT bgworker_requests_fingerprint_check CHECK (((fingerprint IS NULL) OR (fingerprint ~ '^[0-9a-f]{64}$'::text))),
    CONSTRAINT bgworker_requests_link_generation_check CHECK ((link_generation >= 0)),
    CONSTRAINT bgworker_requests_progress_check CHECK (((progress IS NULL) OR ((progress >= (0)::double precision) AND (progress <= (1)::double precision)))),
    CONSTRAINT bgworker_requests_progress_counts CHECK (((progress_total IS NULL) OR (progress_done <= progress_total))),
    CONSTRAINT bgworker_requests_progress_done_check CHECK (((progress_done IS NULL) OR (progress_done >= 0))),
    CONSTRAINT bgworker_requests_progress_total_check CHECK (((progress_total IS NULL) OR (progress_total >= 0))),
    CONSTRAINT bgworker_requests_status_check CHECK ((status = ANY (ARRAY['queued'::text, 'parked'::text, 'running'::text, 'retrying'::text, 'ready'::text, 'failed'::text, 'cancelled'::text, 'expired'::text])))
);

CREATE TABLE public.bgworker_schedule_runs (
    schedule_id uuid NOT NULL,
    period timestamp with time zone NOT NULL,
    request_id uuid NOT NULL,
    event jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    published_at timestamp with time zone
);

CREATE TABLE public.bgworker_schedules (
    id uuid NOT NULL,
    cron text NOT NULL,
    timezone text NOT NULL,
    ends_at timestamp with time zone,
    template jsonb NOT NULL,
    file_type text NOT NULL,
    requester_id text,
    requester_email text,
    tenant text DEFAULT ''::text NOT NULL,
    status text DEFAULT 'active'::text NOT NULL,
    ended_reason text,
    next_run_at timestamp with time zone,
    last_period timestamp with time zone,
    runs integer DEFAULT 0 NOT NULL,
    skipped integer DEFAULT 0 NOT NULL,
    lease_owner text,
    lease_token uuid,
    lease_expires_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT bgworker_schedules_status_check CHECK ((status = ANY (ARRAY['active'::text, 'paused'::text, 'ended'::text])))
);

ALTER TABLE ONLY public.bgworker_dlq_actions ALTER COLUMN id SET DEFAULT nextval('public.bgworker_dlq_actions_id_seq'::regclass);

ALTER TABLE ONLY public.bgworker_admin_login_failures
    ADD CONSTRAINT bgworker_admin_login_failures_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.bgworker_admin_secrets
    ADD CONSTRAINT bgworker_admin_secrets_pkey PRIMARY KEY (name);

ALTER TABLE ONLY public.bgworker_admin_sessions
    ADD CONSTRAINT bgworker_admin_sessions_pkey PRIMARY KEY (token_hash);

ALTER TABLE ONLY public.bgworker_attempts
    ADD CONSTRAINT bgworker_attempts_pkey PRIMARY KEY (request_id, attempt);

ALTER TABLE ONLY public.bgworker_bundles
    ADD CONSTRAINT bgworker_bundles_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.bgworker_dlq_actions
    ADD CONSTRAINT bgworker_dlq_actions_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.bgworker_erasures
    ADD CONSTRAINT bgworker_erasures_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.bgworker_front_door
    ADD CONSTRAINT bgworker_front_door_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.bgworker_migrations
    ADD CONSTRAINT bgworker_migrations_pkey PRIMARY KEY (version);

ALTER TABLE ONLY public.bgworker_outbox
    ADD CONSTRAINT bgworker_outbox_pkey PRIMARY KEY (request_id, kind);

ALTER TABLE ONLY public.bgworker_producer_outbox
    ADD CONSTRAINT bgworker_producer_outbox_pkey PRIMARY KEY (request_id);

ALTER TABLE ONLY public.bgworker_requests
    ADD CONSTRAINT bgworker_requests_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.bgworker_schedule_runs
    ADD CONSTRAINT bgworker_schedule_runs_pkey PRIMARY KEY (schedule_id, period);

ALTER TABLE ONLY public.bgworker_schedule_runs
    ADD CONSTRAINT bgworker_schedule_runs_request_id_key UNIQUE (request_id);

ALTER TABLE ONLY public.bgworker_schedules
    ADD CONSTRAINT bgworker_schedules_pkey PRIMARY KEY (id);

CREATE INDEX bgworker_admin_login_failures_age ON public.bgworker_admin_login_failures USING btree (failed_at);

CREATE INDEX bgworker_admin_login_failures_client ON public.bgworker_admin_login_failures USING btree (client, failed_at);

CREATE INDEX bgworker_admin_sessions_expiry ON public.bgworker_admin_sessions USING btree (expires_at);

CREATE INDEX bgworker_dlq_actions_at ON public.bgworker_dlq_actions USING btree (at);

CREATE INDEX bgworker_dlq_actions_request ON public.bgworker_dlq_actions USING btree (request_id, at);

CREATE INDEX bgworker_front_door_tenant ON public.bgworker_front_door USING btree (tenant, created_at);

CREATE INDEX bgworker_outbox_due ON public.bgworker_outbox USING btree (next_attempt_at) WHERE (status = 'pending'::text);

CREATE INDEX bgworker_outbox_finished ON public.bgworker_outbox USING btree (COALESCE(done_at, created_at)) WHERE (status <> 'pending'::text);

CREATE INDEX bgworker_producer_outbox_published ON public.bgworker_producer_outbox USING btree (published_at) WHERE (published_at IS NOT NULL);

CREATE INDEX bgworker_producer_outbox_unpublished ON public.bgworker_producer_outbox USING btree (created_at) WHERE (published_at IS NULL);

CREATE UNIQUE INDEX bgworker_requests_bundle_part ON public.bgworker_requests USING btree (bundle_id, bundle_index) WHERE (bundle_id IS NOT NULL);

CREATE INDEX bgworker_requests_ended ON public.bgworker_requests USING btree (GREATEST(finished_at, expires_at)) WHERE (finished_at IS NOT NULL);

CREATE INDEX bgworker_requests_expires ON public.bgworker_requests USING btree (expires_at) WHERE (status = 'ready'::text);

CREATE INDEX bgworker_requests_file_type_live ON public.bgworker_requests USING btree (file_type, status) WHERE (status = ANY (ARRAY['running'::text, 'parked'::text, 'queued'::text]));

CREATE INDEX bgworker_requests_fingerprint ON public.bgworker_requests USING btree (fingerprint, finished_at) WHERE (fingerprint IS NOT NULL);

CREATE INDEX bgworker_requests_parked ON public.bgworker_requests USING btree (tenant, received_at, id) WHERE (status = 'parked'::text);

CREATE INDEX bgworker_requests_requester_email ON public.bgworker_requests USING btree (lower(requester_email)) WHERE (requester_email IS NOT NULL);

CREATE INDEX bgworker_requests_running_lease ON public.bgworker_requests USING btree (lease_expires_at) WHERE (status = 'running'::text);

CREATE INDEX bgworker_requests_status ON public.bgworker_requests USING btree (status, received_at);

CREATE INDEX bgworker_requests_storage_key ON public.bgworker_requests USING btree (storage_key) WHERE (storage_key IS NOT NULL);

CREATE INDEX bgworker_requests_tenant_live ON public.bgworker_requests USING btree (tenant, status) WHERE (status = ANY (ARRAY['running'::text, 'parked'::text, 'queued'::text]));

CREATE INDEX bgworker_requests_tenant_received ON public.bgworker_requests USING btree (tenant, received_at);

CREATE INDEX bgworker_requests_waiting ON public.bgworker_requests USING btree (updated_at) WHERE (status = ANY (ARRAY['queued'::text, 'retrying'::text]));

CREATE INDEX bgworker_schedule_runs_unpublished ON public.bgworker_schedule_runs USING btree (created_at) WHERE (published_at IS NULL);

CREATE INDEX bgworker_schedules_due ON public.bgworker_schedules USING btree (next_run_at) WHERE (status = 'active'::text);

CREATE INDEX bgworker_schedules_requester_email ON public.bgworker_schedules USING btree (lower(requester_email)) WHERE (requester_email IS NOT NULL);

ALTER TABLE ONLY public.bgworker_attempts
    ADD CONSTRAINT bgworker_attempts_request_id_fkey FOREIGN KEY (request_id) REFERENCES public.bgworker_requests(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.bgworker_outbox
    ADD CONSTRAINT bgworker_outbox_request_id_fkey FOREIGN KEY (request_id) REFERENCES public.bgworker_requests(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.bgworker_requests
    ADD CONSTRAINT bgworker_requests_bundle_id_fkey FOREIGN KEY (bundle_id) REFERENCES public.bgworker_bundles(id) ON DELETE SET NULL;

ALTER TABLE ONLY public.bgworker_schedule_runs
    ADD CONSTRAINT bgworker_schedule_runs_schedule_id_fkey FOREIGN KEY (schedule_id) REFERENCES public.bgworker_schedules(id) ON DELETE CASCADE;
