-- The producer outbox (bgworker.store.producer_outbox; table from migration 0014): events a
-- producer inserted in its own transaction, published by the relay (bgworker.ops.relay).

-- name: producer_outbox_create
-- For a producer with a database of its own (`bgworker relay --create-table`): the same
-- table as migration 0014 makes in bgworker's.
CREATE TABLE IF NOT EXISTS bgworker_producer_outbox (
    request_id   uuid PRIMARY KEY,
    event        jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS bgworker_producer_outbox_unpublished
    ON bgworker_producer_outbox (created_at) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS bgworker_producer_outbox_published
    ON bgworker_producer_outbox (published_at) WHERE published_at IS NOT NULL;

-- name: producer_outbox_enqueue
-- What a producer runs in its transaction (asyncpg); an id enqueued twice is one event. The
-- event as JSON text: the producer's connection need not have bgworker's jsonb codec.
INSERT INTO bgworker_producer_outbox (request_id, event) VALUES ($1, $2::text::jsonb)
ON CONFLICT (request_id) DO NOTHING;

-- name: producer_outbox_take
-- Committed, unpublished events, oldest first, locked for the relay's transaction: two
-- relays take different rows (SKIP LOCKED), and an uncommitted insert is invisible.
SELECT request_id, event FROM bgworker_producer_outbox
WHERE published_at IS NULL
ORDER BY created_at
LIMIT $1
FOR UPDATE SKIP LOCKED;

-- name: producer_outbox_published
UPDATE bgworker_producer_outbox SET published_at = now() WHERE request_id = ANY($1::uuid[]);
