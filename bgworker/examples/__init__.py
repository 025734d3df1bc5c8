"""Example handlers shipped with bgworker (used by the demo and the tests)."""

from bgworker.examples.login_events import registry

__all__ = ["registry"]
