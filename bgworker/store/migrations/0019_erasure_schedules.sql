-- The erasure audit row counts the schedules an erasure deleted too (issue 23's schedules
-- are a person's data: `bgworker forget` deletes them with their recorded periods, and the
-- report said so, but the audit row, which outlives the report, did not).
ALTER TABLE bgworker_erasures ADD COLUMN schedules integer NOT NULL DEFAULT 0;
