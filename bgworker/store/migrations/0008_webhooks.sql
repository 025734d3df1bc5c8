-- Webhooks (issue 14): two new effect kinds, and a status for an effect given up (a
-- webhook after its last attempt, or one whose URL is refused: never retried). Emails and
-- events are retried until they succeed, as before; only webhooks are given up.
ALTER TABLE bgworker_outbox
    DROP CONSTRAINT bgworker_outbox_kind_check,
    ADD CONSTRAINT bgworker_outbox_kind_check CHECK (kind IN (
        'email_ready', 'email_failed', 'event_ready', 'event_failed',
        'webhook_ready', 'webhook_failed'
    )),
    DROP CONSTRAINT bgworker_outbox_status_check,
    ADD CONSTRAINT bgworker_outbox_status_check
        CHECK (status IN ('pending', 'done', 'given_up'));
