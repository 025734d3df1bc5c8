-- POST /requests (bgworker.web.front_door): the events accepted over HTTP, by id, so the
-- same id answers the same way before any worker has recorded the request (it may wait in
-- the queue for a while) and two concurrent POSTs of one id publish one body.
-- published_at stays NULL until RabbitMQ confirmed the message: a POST answered 503 is
-- published by the client's retry of the same body.
CREATE TABLE bgworker_front_door (
    id           uuid PRIMARY KEY,
    event        jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
