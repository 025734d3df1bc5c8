-- Dedupe by content (issue 14): a file type registered with dedupe_seconds fingerprints
-- each request (file type, canonical criteria, requester). The row that builds a file
-- carries the fingerprint; a later identical request within the window reuses the ready
-- file: its row points at the same bytes and records where they came from (reused_from).
-- reused_from has no foreign key: a purge may remove the source row while a reused one
-- still serves the bytes, which cleanup keeps while any live row points to them.
ALTER TABLE bgworker_requests
    ADD COLUMN fingerprint text CHECK (fingerprint IS NULL OR fingerprint ~ '^[0-9a-f]{64}$'),
    ADD COLUMN reused_from uuid;

-- The reuse and wait look-ups: rows of one fingerprint, newest build first.
CREATE INDEX bgworker_requests_fingerprint ON bgworker_requests (fingerprint, finished_at)
    WHERE fingerprint IS NOT NULL;

-- Cleanup asks whether another live row shares a file before deleting it (and the orphan
-- scan asks which keys are referenced at all).
CREATE INDEX bgworker_requests_storage_key ON bgworker_requests (storage_key)
    WHERE storage_key IS NOT NULL;
