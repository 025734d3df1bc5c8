-- Bundles (issue 23, part 1): one BundleRequested names several parts; each part is an
-- ordinary request row (it retries, dead-letters, is cancelled and downloaded as any), tied
-- to its bundle by bundle_id and its place in it by bundle_index.
CREATE TABLE bgworker_bundles (
    id            uuid PRIMARY KEY,
    event         jsonb NOT NULL,
    requester_id  text,
    requester_email text,
    tenant        text NOT NULL DEFAULT '',
    parts         integer NOT NULL CHECK (parts > 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- Set once, by the transaction that ended its last part: the one email is written then.
    finished_at   timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false
);

ALTER TABLE bgworker_requests
    ADD COLUMN bundle_id uuid REFERENCES bgworker_bundles (id) ON DELETE SET NULL,
    ADD COLUMN bundle_index integer CHECK (bundle_index IS NULL OR bundle_index >= 0);

-- The CRC-32 of a part's file, recorded the first time a bundle's ZIP streamed all of it:
-- later ranges of the ZIP that need it (the central directory, a resume near the end) then
-- read none of the file for it.
ALTER TABLE bgworker_requests
    ADD COLUMN crc32 bigint CHECK (crc32 IS NULL OR crc32 BETWEEN 0 AND 4294967295);

CREATE UNIQUE INDEX bgworker_requests_bundle_part
    ON bgworker_requests (bundle_id, bundle_index) WHERE bundle_id IS NOT NULL;

-- The bundle's one email, written on the outbox row of the part whose end finished it.
ALTER TABLE bgworker_outbox
    DROP CONSTRAINT bgworker_outbox_kind_check,
    ADD CONSTRAINT bgworker_outbox_kind_check CHECK (kind IN (
        'email_ready', 'email_failed', 'event_ready', 'event_failed',
        'webhook_ready', 'webhook_failed', 'email_bundle'));
