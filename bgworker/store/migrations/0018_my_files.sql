-- The requester's "my files" page (issue 23, part 3): the email that carries its link
-- (POST /my-files) is an outbox effect like the others, on the requester's newest request,
-- so it is claimed, sent once, retried and listed on the console as they are. Every kind
-- the earlier migrations allow stays allowed (0016: a bundle's one email).
ALTER TABLE bgworker_outbox
    DROP CONSTRAINT bgworker_outbox_kind_check,
    ADD CONSTRAINT bgworker_outbox_kind_check CHECK (kind IN (
        'email_ready', 'email_failed', 'event_ready', 'event_failed',
        'webhook_ready', 'webhook_failed', 'email_bundle', 'email_my_files'
    ));
