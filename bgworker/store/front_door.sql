-- The HTTP front door's record of accepted events (bgworker.store.front_door, migration 0011).

-- name: front_door_reserve
-- The first POST of an id wins the row; a later one gets nothing back and reads it.
INSERT INTO bgworker_front_door (id, event)
VALUES ($1, $2)
ON CONFLICT (id) DO NOTHING
RETURNING id;

-- name: front_door_get
SELECT event, published_at FROM bgworker_front_door WHERE id = $1;

-- name: front_door_lock
-- Held by the POST that publishes, until the publish is confirmed and recorded: a racing POST
-- of the same id waits here, then finds it published (or, if that one failed, publishes).
SELECT event, published_at FROM bgworker_front_door WHERE id = $1 FOR UPDATE;

-- name: front_door_published
UPDATE bgworker_front_door SET published_at = now() WHERE id = $1;
