-- Progress as counts (issue 12): what a handler reported with ctx.progress(done, total),
-- next to the fraction. The fraction becomes double precision: `real` (float4) turned a
-- reported 0.65 into 0.6499999761581421 in every JSON answer; existing values are rounded
-- to the six digits float4 holds.
ALTER TABLE bgworker_requests
    ALTER COLUMN progress TYPE double precision
        USING round(progress::numeric, 6)::double precision,
    ADD COLUMN progress_done  bigint CHECK (progress_done IS NULL OR progress_done >= 0),
    ADD COLUMN progress_total bigint CHECK (progress_total IS NULL OR progress_total >= 0),
    ADD CONSTRAINT bgworker_requests_progress_counts
        CHECK (progress_total IS NULL OR progress_done <= progress_total);
