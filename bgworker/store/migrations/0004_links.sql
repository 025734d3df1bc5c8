-- Link lifecycle: every token carries the row's link generation; `bgworker revoke` raises
-- it, so every link issued before stops working while the file stays.
ALTER TABLE bgworker_requests
    ADD COLUMN link_generation integer NOT NULL DEFAULT 0 CHECK (link_generation >= 0);
