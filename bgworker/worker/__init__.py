"""The worker: the consumer pool and everything one delivery goes through."""

from bgworker.worker.pool import Limits, Worker

__all__ = ["Limits", "Worker"]
