"""The ``bgworker`` command: its parser, every verb, the demo and the SMTP sink."""
