-- Recovery sweep (worker): when a waiting request's message was last republished because it
-- had gone missing, and how often that happened.
ALTER TABLE bgworker_requests
    ADD COLUMN recovered_at timestamptz,
    ADD COLUMN recoveries   integer NOT NULL DEFAULT 0;

-- The sweep scans waiting rows by age.
CREATE INDEX bgworker_requests_waiting ON bgworker_requests (updated_at)
    WHERE status IN ('queued', 'retrying');
