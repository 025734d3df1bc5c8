-- Fair share (docs/architecture.md, "Fair share"): the tenant a request counts against, and
-- the status `parked` for a request over its tenant's or file type's cap, which waits here,
-- without a message, until a slot frees (bgworker.store.fairness).
ALTER TABLE bgworker_requests ADD COLUMN tenant text NOT NULL DEFAULT '';
-- Set when a parked request is woken (status back to `queued`, its message republished):
-- until its claim, or for a lease length at most, it holds the slot it was woken for, so
-- two wakes never hand one slot to two requests.
ALTER TABLE bgworker_requests ADD COLUMN woken_at timestamptz;
ALTER TABLE bgworker_requests DROP CONSTRAINT bgworker_requests_status_check;
ALTER TABLE bgworker_requests ADD CONSTRAINT bgworker_requests_status_check CHECK (
    status IN ('queued', 'parked', 'running', 'retrying', 'ready', 'failed', 'cancelled',
               'expired'));
-- Requests already recorded count against the tenant they would have now.
UPDATE bgworker_requests
SET tenant = coalesce(event ->> 'tenant', requester_id, '')
WHERE status IN ('queued', 'running', 'retrying');
-- The claim counts a tenant's and a file type's running requests (by status first: a
-- tenant with thousands parked is counted over its few running ones); the wake takes each
-- tenant's oldest parked ones.
CREATE INDEX bgworker_requests_tenant_live ON bgworker_requests (tenant, status)
    WHERE status IN ('running', 'parked', 'queued');
CREATE INDEX bgworker_requests_file_type_live ON bgworker_requests (file_type, status)
    WHERE status IN ('running', 'parked', 'queued');
CREATE INDEX bgworker_requests_parked ON bgworker_requests (tenant, received_at, id)
    WHERE status = 'parked';
-- Quotas count a tenant's requests received in the last hour or day.
CREATE INDEX bgworker_requests_tenant_received ON bgworker_requests (tenant, received_at);
-- POST /requests counts what it accepted but no worker has recorded yet against the quota.
ALTER TABLE bgworker_front_door ADD COLUMN tenant text NOT NULL DEFAULT '';
CREATE INDEX bgworker_front_door_tenant ON bgworker_front_door (tenant, created_at);
