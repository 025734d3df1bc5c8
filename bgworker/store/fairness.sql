-- Fair share: the capped claim, parking and waking (bgworker.store.fairness;
-- docs/architecture.md, "Fair share").

-- name: lock_cap
-- Serialises the claims that count against one cap (a tenant's, a file type's) until the
-- transaction ends: two workers counting at once would both find the last slot free.
-- Claims take the tenant's lock before the file type's, so two never wait on each other.
SELECT pg_advisory_xact_lock(hashtextextended($1, 0));

-- name: record_and_claim_capped
-- params: id, file_type, event, filename, content_type, requester_id, requester_email,
--         requested_at, max_attempts, worker, lease_seconds, requested_at_set, tenant,
--         tenant_cap, file_type_cap
-- record_and_claim (requests.sql) for a request a cap applies to, run after lock_cap for
-- the tenant and the file type. It claims only when the tenant has fewer than $14 and the
-- file type fewer than $15 requests running under a live lease (a worker killed with -9
-- stops counting when its lease expires: no slot leaks). Otherwise the row is recorded, or
-- left, `parked`: no lease, no attempt counted; the caller acks the delivery and a wake
-- republishes the request when a slot frees. Same runnable rule and fence as
-- record_and_claim; the row comes back with its status (running or parked).
WITH room AS (
    SELECT bgworker_cap_room($1, $13, $2, $14, $15) AS ok  -- migration 0015
), claimed AS (
    INSERT INTO bgworker_requests AS r
        (id, file_type, event, filename, content_type, requester_id, requester_email,
         requested_at, max_attempts, tenant, status, attempts, lease_owner, lease_token,
         lease_expires_at, started_at, progress)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $13,
           CASE WHEN ok THEN 'running' ELSE 'parked' END,
           CASE WHEN ok THEN 1 ELSE 0 END,
           CASE WHEN ok THEN $10 END,
           CASE WHEN ok THEN gen_random_uuid() END,
           CASE WHEN ok THEN now() + make_interval(secs => $11) END,
           CASE WHEN ok THEN now() END,
           CASE WHEN ok THEN 0 END
    FROM room
    ON CONFLICT (id) DO UPDATE
    SET status = excluded.status,
        attempts = r.attempts + excluded.attempts,
        lease_owner = excluded.lease_owner,
        lease_token = excluded.lease_token,
        lease_expires_at = excluded.lease_expires_at,
        started_at = coalesce(r.started_at, excluded.started_at),
        next_run_at = NULL,
        woken_at = NULL,
        progress = CASE WHEN excluded.status = 'running' THEN 0 ELSE r.progress END,
        progress_done = CASE WHEN excluded.status = 'running' THEN NULL ELSE r.progress_done END,
        progress_total = CASE WHEN excluded.status = 'running' THEN NULL
                              ELSE r.progress_total END,
        updated_at = now()
    -- A running row whose lease expired is taken only into a free slot: parked, its lost
    -- attempt would stay open; left alone, the reaper closes it and requeues the request.
    WHERE NOT r.cancel_requested
      AND (r.status IN ('queued', 'retrying', 'parked')
           OR (r.status = 'running' AND r.lease_expires_at < now()
               AND excluded.status = 'running'))
      AND CASE WHEN $12 THEN r.event = excluded.event
               ELSE (r.event - 'requested_at') = (excluded.event - 'requested_at') END
    RETURNING id, attempts, lease_token, max_attempts, status
), attempt AS (
    -- clock_timestamp(), not now() (the transaction's start, before lock_cap's wait): an
    -- attempt starts after the commit that freed its slot, as the caps count it.
    INSERT INTO bgworker_attempts (request_id, attempt, worker, started_at)
    SELECT id, attempts, $10, clock_timestamp() FROM claimed WHERE status = 'running'
    ON CONFLICT (request_id, attempt)
    DO UPDATE SET worker = excluded.worker, started_at = excluded.started_at
)
SELECT id, attempts, lease_token, max_attempts, status FROM claimed;

-- name: lock_wakes
-- One wake at a time: two would both see the same free slot and hand it out twice. Taken
-- after any lock_cap (claims never take it): no two transactions wait on each other.
SELECT pg_advisory_xact_lock(hashtextextended('bgworker.fair_share.wake', 0));

-- name: parked_to_wake
-- params: tenant, file_type, default_cap, tenants, tenant_caps, file_types,
--         file_type_caps, lease_seconds, limit
-- The parked requests that fit their caps now, oldest first. A slot is held by a request
-- running under a live lease, or woken and not yet claimed (for a lease length at most:
-- its message may be slow, never lost, since the recovery sweep republishes a queued row).
-- A tenant's oldest parked requests fill its free slots; of those, each file type's oldest
-- fill the file type's. $1/$2: only the tenant or the file type whose slot just freed (NULL:
-- all, the sweep). Caps: $3 the default per tenant (NULL: none), $4/$5 the per-tenant
-- overrides, $6/$7 the file types'.
WITH tenant_caps AS (
    SELECT * FROM unnest($4::text[], $5::int[]) AS t (tenant, cap)
), file_type_caps AS (
    SELECT * FROM unnest($6::text[], $7::int[]) AS f (file_type, cap)
), holding AS (
    SELECT tenant, file_type FROM bgworker_requests
    WHERE (status = 'running' AND lease_expires_at >= now())
       OR (status = 'queued' AND woken_at > now() - make_interval(secs => $8))
), tenant_busy AS (
    SELECT tenant, count(*) AS n FROM holding GROUP BY tenant
), file_type_busy AS (
    SELECT file_type, count(*) AS n FROM holding GROUP BY file_type
), parked_tenants AS (
    SELECT DISTINCT tenant FROM bgworker_requests
    WHERE status = 'parked' AND ($1::text IS NULL OR tenant = $1 OR file_type = $2)
), candidates AS (
    -- Each tenant's oldest $9 at most (bgworker_requests_parked): a tenant with thousands
    -- parked costs no more to wake than one with a few.
    SELECT p.id, t.tenant, p.file_type, p.received_at,
           row_number() OVER (PARTITION BY t.tenant ORDER BY p.received_at, p.id) AS nth
    FROM parked_tenants t
    CROSS JOIN LATERAL (
        SELECT q.id, q.file_type, q.received_at FROM bgworker_requests q
        WHERE q.status = 'parked' AND q.tenant = t.tenant AND NOT q.cancel_requested
          AND ($1::text IS NULL OR q.tenant = $1 OR q.file_type = $2)
        ORDER BY q.received_at, q.id
        LIMIT $9
    ) p
), tenant_fits AS (
    SELECT c.id, c.file_type, c.received_at,
           row_number() OVER (PARTITION BY c.file_type ORDER BY c.received_at, c.id) AS nth
    FROM candidates c
    LEFT JOIN tenant_caps tc ON tc.tenant = c.tenant
    LEFT JOIN tenant_busy tb ON tb.tenant = c.tenant
    WHERE c.nth <= coalesce(tc.cap, $3, 1000000000) - coalesce(tb.n, 0)
)
SELECT f.id FROM tenant_fits f
LEFT JOIN file_type_caps fc ON fc.file_type = f.file_type
LEFT JOIN file_type_busy fb ON fb.file_type = f.file_type
WHERE f.nth <= coalesce(fc.cap, 1000000000) - coalesce(fb.n, 0)
ORDER BY f.received_at, f.id
LIMIT $9;

-- name: any_parked
-- Whether a wake has anything to look at: parked requests of the tenant or file type ($1,
-- $2; $1 NULL: any). Cheap (bgworker_requests_parked), so a finished job whose tenant has
-- none parked pays one indexed look.
SELECT EXISTS (
    SELECT 1 FROM bgworker_requests
    WHERE status = 'parked' AND ($1::text IS NULL OR tenant = $1 OR file_type = $2)
);

-- name: wake_parked
-- A parked request woken: queued again, holding its slot (woken_at) until claimed; the
-- caller republishes its event in the same transaction.
UPDATE bgworker_requests
SET status = 'queued', woken_at = now(), updated_at = now()
WHERE id = $1 AND status = 'parked' AND NOT cancel_requested
RETURNING event;

-- name: tenant_counts
-- Per tenant: requests running (under a live lease), parked, and queued (recorded and
-- waiting for their message); the busiest first. $1: one tenant (NULL: all); $2: how many.
SELECT tenant,
       count(*) FILTER (WHERE status = 'running' AND lease_expires_at >= now()) AS in_flight,
       count(*) FILTER (WHERE status = 'parked') AS parked,
       count(*) FILTER (WHERE status = 'queued') AS queued
FROM bgworker_requests
WHERE status IN ('running', 'parked', 'queued') AND ($1::text IS NULL OR tenant = $1)
GROUP BY tenant
ORDER BY count(*) DESC, tenant
LIMIT $2;

-- name: quota_usage
-- A tenant's requests in the last $2 seconds: recorded by a worker (not those refused for
-- the quota), or accepted by POST /requests and not recorded yet; and how many seconds until
-- the oldest of them leaves the window (when the next request may fit).
WITH seen AS (
    SELECT received_at AS at FROM bgworker_requests
    WHERE tenant = $1 AND received_at > now() - make_interval(secs => $2)
      AND failure_reason IS DISTINCT FROM 'over_quota'
    UNION ALL
    SELECT d.created_at FROM bgworker_front_door d
    WHERE d.tenant = $1 AND d.created_at > now() - make_interval(secs => $2)
      AND NOT EXISTS (SELECT 1 FROM bgworker_requests r WHERE r.id = d.id)
)
SELECT count(*) AS used,
       coalesce(extract(epoch FROM min(at) + make_interval(secs => $2) - now()), 0)::float8
           AS frees_in
FROM seen;

-- name: parked_of
-- Which of the requests $1 are parked (after the parker's pipelined parks).
SELECT id, event FROM bgworker_requests WHERE id = ANY($1::uuid[]) AND status = 'parked';

-- name: recorded
SELECT EXISTS (SELECT 1 FROM bgworker_requests WHERE id = $1);

-- name: park_capped
-- params: id, file_type, event, filename, content_type, requester_id, requester_email,
--         requested_at, max_attempts, requested_at_set, tenant, tenant_cap, file_type_cap,
--         share
-- The parker's statement (worker/parking.py): record_and_claim_capped without the claim,
-- for a delivery taken without a job slot. Run after lock_cap for the tenant and the file
-- type, like the claim. Over a cap, the row is recorded, or left, `parked` exactly as the
-- claim parks it; fitting its caps (or not runnable: cancelled, running, finished) nothing
-- changes and `parked` comes back false: the caller hands the delivery back to the work
-- queue, for a job slot's claim. With share (fair share on) it is parked even if it fits.
WITH room AS (
    -- Under fair share ($14) every delivery the parker holds is parked: it got it because
    -- no job slot could take it (docs/architecture.md, "Fair share").
    SELECT $14::boolean OR NOT bgworker_cap_room($1, $11, $2, $12, $13) AS park
), parked AS (
    INSERT INTO bgworker_requests AS r
        (id, file_type, event, filename, content_type, requester_id, requester_email,
         requested_at, max_attempts, tenant, status, attempts, received_at)
    -- clock_timestamp(), not now(): a batch's rows are one transaction, and wakes go
    -- oldest first by received_at, so each must be later than the one parked before it.
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $11, 'parked', 0, clock_timestamp()
    FROM room WHERE park
    ON CONFLICT (id) DO UPDATE
    SET status = 'parked',
        lease_owner = NULL,
        lease_token = NULL,
        lease_expires_at = NULL,
        next_run_at = NULL,
        woken_at = NULL,
        updated_at = now()
    WHERE NOT r.cancel_requested
      AND r.status IN ('queued', 'retrying', 'parked')
      AND CASE WHEN $10 THEN r.event = excluded.event
               ELSE (r.event - 'requested_at') = (excluded.event - 'requested_at') END
    RETURNING id
)
SELECT EXISTS (SELECT 1 FROM parked) AS parked;

-- name: claim_parked
-- params: worker, lease_seconds, default_cap, tenants, tenant_caps, file_types,
--         file_type_caps, only, dry
-- Fair share (docs/architecture.md, "Fair share"): a freed job slot takes the fairest
-- parked request directly, with no message: of the tenants with a parked request and room
-- under their hard cap (default $3, overrides $4/$5), the one with the fewest requests
-- running under a live lease; ties (and within a tenant) the oldest parked first; file
-- types at their cap ($6/$7) skipped. The row is set running under a new lease, its attempt
-- counted and recorded, as record_and_claim does, in this one statement; the caller runs
-- the stored event. SKIP LOCKED: two slots claiming at once take two different rows, so
-- each tenant offers its oldest 8 (the statement's snapshot may hold some another worker
-- has claimed since: the caller then claims again, worker/sharing.py). $8: only that
-- request (NULL: any). $9 (dry): pick, change nothing (the caller then takes the caps'
-- locks and claims $8 = the pick, so hard caps hold exactly). Returns nothing when no
-- parked request fits.
WITH RECURSIVE parked_tenants AS (
    -- The distinct tenants with parked requests, one index probe each
    -- (bgworker_requests_parked), however many requests each has parked.
    (SELECT tenant FROM bgworker_requests WHERE status = 'parked' ORDER BY tenant LIMIT 1)
    UNION ALL
    SELECT (SELECT q.tenant FROM bgworker_requests q
            WHERE q.status = 'parked' AND q.tenant > t.tenant ORDER BY q.tenant LIMIT 1)
    FROM parked_tenants t WHERE t.tenant IS NOT NULL
), running AS (
    SELECT tenant, file_type FROM bgworker_requests
    WHERE status = 'running' AND lease_expires_at >= now()
), tenant_busy AS (
    SELECT tenant, count(*) AS n FROM running GROUP BY tenant
), file_type_full AS (
    SELECT f.file_type FROM unnest($6::text[], $7::int[]) AS f (file_type, cap)
    WHERE (SELECT count(*) FROM running r WHERE r.file_type = f.file_type) >= f.cap
), candidates AS (
    SELECT p.id, coalesce(b.n, 0) AS busy, p.received_at
    FROM parked_tenants t
    LEFT JOIN tenant_busy b ON b.tenant = t.tenant
    LEFT JOIN unnest($4::text[], $5::int[]) AS c (tenant, cap) ON c.tenant = t.tenant
    CROSS JOIN LATERAL (
        SELECT q.id, q.received_at FROM bgworker_requests q
        WHERE q.status = 'parked' AND q.tenant = t.tenant AND NOT q.cancel_requested
          AND q.file_type NOT IN (SELECT file_type FROM file_type_full)
          AND ($8::uuid IS NULL OR q.id = $8)
        ORDER BY q.received_at, q.id
        LIMIT 8
    ) p
    WHERE t.tenant IS NOT NULL AND coalesce(b.n, 0) < coalesce(c.cap, $3, 1000000000)
), pick AS (
    SELECT r.id, r.tenant, r.file_type FROM bgworker_requests r
    JOIN candidates c ON c.id = r.id
    WHERE r.status = 'parked' AND NOT r.cancel_requested
    ORDER BY c.busy, c.received_at, c.id
    LIMIT 1
    FOR UPDATE OF r SKIP LOCKED
), claimed AS (
    UPDATE bgworker_requests r
    SET status = 'running',
        attempts = r.attempts + 1,
        lease_owner = $1,
        lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => $2),
        started_at = coalesce(r.started_at, now()),
        next_run_at = NULL,
        woken_at = NULL,
        progress = 0,
        progress_done = NULL,
        progress_total = NULL,
        updated_at = now()
    FROM pick
    WHERE r.id = pick.id AND NOT $9::boolean
    RETURNING r.id, r.attempts, r.lease_token, r.max_attempts, r.event
), attempt AS (
    -- clock_timestamp(): after the caps' locks, as in record_and_claim_capped.
    INSERT INTO bgworker_attempts (request_id, attempt, worker, started_at)
    SELECT id, attempts, $1, clock_timestamp() FROM claimed
    ON CONFLICT (request_id, attempt)
    DO UPDATE SET worker = excluded.worker, started_at = excluded.started_at
)
SELECT p.id, p.tenant, p.file_type, c.attempts, c.lease_token, c.max_attempts, c.event
FROM pick p LEFT JOIN claimed c ON c.id = p.id;
