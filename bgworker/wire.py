"""The wire format: every message bgworker publishes and every header it reads back.

Header names are the constants below; nothing else in the package spells them.
"""

from __future__ import annotations

from typing import Final

# Dead letters (read back by the dead-letter tools).
REASON: Final = "x-bgworker-reason"
ERROR_CLASS: Final = "x-bgworker-error-class"
ERROR: Final = "x-bgworker-error"
ATTEMPTS: Final = "x-bgworker-attempts"
WORKER: Final = "x-bgworker-worker"
FAILED_AT: Final = "x-bgworker-failed-at"
ROUTING_KEY: Final = "x-bgworker-routing-key"
TRACEBACK: Final = "x-bgworker-traceback"
# A request put back by `bgworker dlq replay`: how many times it was replayed.
REPLAY: Final = "x-bgworker-replay"
# Set by RabbitMQ on letters it dead-lettered itself (delivery limit, reject), and on
# quorum-queue redeliveries.
X_DEATH: Final = "x-death"
X_DELIVERY_COUNT: Final = "x-delivery-count"
