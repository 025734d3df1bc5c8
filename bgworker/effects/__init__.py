"""What a finished request causes, carried out once: emails, outgoing events and webhooks
(the outbox), and which addresses a webhook may reach."""
