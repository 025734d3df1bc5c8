-- Fair share, work-conserving (docs/architecture.md, "Fair share"): whether a request's
-- tenant and file type have a free slot under their hard caps, in one place. The capped
-- claim (record_and_claim_capped), the parker's park (park_capped) and nothing else count
-- against a cap, all through this function: a slot is a request `running` under a live
-- lease (a worker killed with -9 stops counting when its lease expires), other than the
-- request itself. A cap of 1000000000 (fairness.UNLIMITED) is no cap: nothing is counted.
-- Called under the caps' advisory locks (fairness.sql, lock_cap), so the count is exact.
CREATE FUNCTION bgworker_cap_room(
    p_id uuid, p_tenant text, p_file_type text, p_tenant_cap int, p_file_type_cap int
) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT (p_tenant_cap >= 1000000000
            OR (SELECT count(*) FROM bgworker_requests b
                WHERE b.tenant = p_tenant AND b.status = 'running'
                  AND b.lease_expires_at >= now() AND b.id <> p_id) < p_tenant_cap)
       AND (p_file_type_cap >= 1000000000
            OR (SELECT count(*) FROM bgworker_requests b
                WHERE b.file_type = p_file_type AND b.status = 'running'
                  AND b.lease_expires_at >= now() AND b.id <> p_id) < p_file_type_cap)
$$;
