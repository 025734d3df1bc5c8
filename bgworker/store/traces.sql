-- The trace context a job left in its outbox payloads (bgworker.store.traces, tracing on).

-- name: trace_carrier
-- The ready event's payload carries it whenever the job was traced (every ready request
-- has that row, email or not).
SELECT payload -> 'trace' AS carrier
FROM bgworker_outbox
WHERE request_id = $1 AND kind = 'event_ready';
