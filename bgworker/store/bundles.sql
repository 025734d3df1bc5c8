-- Bundles: one BundleRequested, a request row per part (bgworker.store.bundles, migration 0017).

-- name: insert_bundle
-- params: id, event, requester_id, requester_email, tenant, parts
-- The first delivery records the bundle; a later one gets nothing back (a duplicate).
INSERT INTO bgworker_bundles (id, event, requester_id, requester_email, tenant, parts)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (id) DO NOTHING
RETURNING id;

-- name: insert_bundle_part
-- params: id, file_type, event, filename, content_type, requester_id, requester_email,
--         requested_at, max_attempts, tenant, bundle_id, bundle_index
-- A part recorded queued with the bundle, its event exactly the one published for it, so the
-- worker's claim of that message (record_and_claim) finds it equal and runs it.
INSERT INTO bgworker_requests
    (id, file_type, event, filename, content_type, requester_id, requester_email,
     requested_at, max_attempts, tenant, bundle_id, bundle_index, status)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'queued')
ON CONFLICT (id) DO NOTHING;

-- name: lock_bundle
-- Taken by the transaction that ends a part, after its own row changed: two parts ending at
-- once are serialized here, so the later one's next statement sees the earlier one's commit
-- and exactly one of them finds every part ended.
SELECT id FROM bgworker_bundles WHERE id = $1 FOR UPDATE;

-- name: finish_bundle
-- The bundle ends once no part is in progress; the transaction that ends it writes its email.
-- A cancelled bundle sends none.
UPDATE bgworker_bundles b
SET finished_at = now()
WHERE b.id = $1 AND b.finished_at IS NULL AND NOT b.cancel_requested
  AND NOT EXISTS (
      SELECT 1 FROM bgworker_requests r
      WHERE r.bundle_id = b.id AND r.status IN ('queued', 'parked', 'running', 'retrying'))
RETURNING b.id, b.event, b.requester_id, b.requester_email, b.finished_at;

-- name: get_bundle
SELECT id, event, requester_id, requester_email, tenant, parts, created_at, finished_at,
       cancel_requested
FROM bgworker_bundles WHERE id = $1;

-- name: bundle_parts
SELECT r.* FROM bgworker_requests r WHERE r.bundle_id = $1 ORDER BY r.bundle_index;

-- name: cancel_bundle
-- Marks the bundle cancelled (no email then) and names its parts, which the caller cancels
-- each as a producer's cancel would.
UPDATE bgworker_bundles SET cancel_requested = true WHERE id = $1
RETURNING (SELECT array_agg(r.id ORDER BY r.bundle_index)
           FROM bgworker_requests r WHERE r.bundle_id = $1) AS parts;

-- name: cancel_bundle_first
-- A cancel that came before its bundle (recorded as a placeholder request under the bundle's
-- id, as for any request): the bundle and its parts are recorded cancelled, never built.
WITH first AS (
    SELECT 1 FROM bgworker_requests WHERE id = $1 AND cancel_requested
), bundle AS (
    UPDATE bgworker_bundles SET cancel_requested = true
    WHERE id = $1 AND EXISTS (SELECT 1 FROM first)
    RETURNING id
)
UPDATE bgworker_requests r
SET status = 'cancelled', cancel_requested = true, finished_at = now(), updated_at = now()
FROM bundle
WHERE r.bundle_id = bundle.id
RETURNING r.id;

-- name: part_crcs
-- The CRC-32s recorded for bundle $1's parts (NULL: not computed yet).
SELECT id, crc32 FROM bgworker_requests WHERE bundle_id = $1;

-- name: record_crc
-- A part's CRC-32 ($2), for the file of sha256 $3 only (the file the ZIP read).
UPDATE bgworker_requests SET crc32 = $2 WHERE id = $1 AND sha256 = $3 AND crc32 IS NULL;
