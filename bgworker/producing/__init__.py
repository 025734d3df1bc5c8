"""Producing: inline or delay, for services that ask for files."""

from bgworker.producing.producer import (
    Delayed,
    Inline,
    Producer,
    SyncProducer,
    aiohttp_response,
    django_response,
    starlette_response,
)

__all__ = [
    "Delayed",
    "Inline",
    "Producer",
    "SyncProducer",
    "aiohttp_response",
    "django_response",
    "starlette_response",
]
