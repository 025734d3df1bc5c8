"""The names of states: request statuses, attempt and job outcomes, effect kinds and the
reasons a request fails or a message is dead-lettered.

String enums, so each member *is* the string PostgreSQL stores and the headers carry
(``Status.READY == "ready"``): code compares members, SQL keeps literals, and
``tests/integration/test_states.py`` checks the database's CHECK constraints hold exactly
these values.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Status(StrEnum):
    """A request row's status (``bgworker_requests.status``)."""

    QUEUED = "queued"
    # Over its tenant's or file type's in-flight cap: waits in PostgreSQL without a message
    # until a slot frees (docs/architecture.md, "Fair share").
    PARKED = "parked"
    RUNNING = "running"
    RETRYING = "retrying"
    READY = "ready"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


# Not finished yet: a worker may still run it (the dead-letter tools and the download
# server both ask this).
IN_PROGRESS: Final = frozenset({Status.QUEUED, Status.PARKED, Status.RUNNING, Status.RETRYING})
# Waiting for a message to carry it to a worker (the recovery sweep looks after these).
WAITING: Final = frozenset({Status.QUEUED, Status.RETRYING})
# Its file was built (and may since have expired): never run twice.
DONE: Final = frozenset({Status.READY, Status.EXPIRED})


class AttemptOutcome(StrEnum):
    """How one attempt ended (``bgworker_attempts.outcome``)."""

    READY = "ready"
    RETRYING = "retrying"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"


class EffectKind(StrEnum):
    """One outbox row per (request, kind) (``bgworker_outbox.kind``)."""

    EMAIL_READY = "email_ready"
    EMAIL_FAILED = "email_failed"
    EVENT_READY = "event_ready"
    EVENT_FAILED = "event_failed"
    WEBHOOK_READY = "webhook_ready"
    WEBHOOK_FAILED = "webhook_failed"
    # The email with the link to a requester's "my files" page (POST /my-files), on the
    # address's newest request.
    EMAIL_MY_FILES = "email_my_files"
    EMAIL_BUNDLE = "email_bundle"  # a bundle's one email, when its last part ended


EMAILS: Final = frozenset(
    {
        EffectKind.EMAIL_READY,
        EffectKind.EMAIL_FAILED,
        EffectKind.EMAIL_MY_FILES,
        EffectKind.EMAIL_BUNDLE,
    }
)
# Given up after ``webhooks.max_attempts`` (a receiver may be gone for good); emails and
# events are retried until they succeed.
WEBHOOKS: Final = frozenset({EffectKind.WEBHOOK_READY, EffectKind.WEBHOOK_FAILED})


class EffectStatus(StrEnum):
    """Where an outbox row stands (``bgworker_outbox.status``)."""

    PENDING = "pending"
    DONE = "done"
    GIVEN_UP = "given_up"


class JobOutcome(StrEnum):
    """What became of one delivery (worker counters, logs, tests)."""

    READY = "ready"
    RETRYING = "retrying"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"
    RELEASED = "released"
    DUPLICATE = "duplicate"
    BUNDLED = "bundled"  # a BundleRequested recorded and its parts published (no job ran)
    PARKED = "parked"  # over a cap: recorded as parked and acked, runs when woken
    OVER_QUOTA = "over_quota"  # its tenant's quota used up: deferred or failed
    INVALID = "invalid"
    UNSTORABLE = "unstorable"
    UNPROCESSABLE = "unprocessable"
    ERROR = "error"  # held for infrastructure, then handed back (or failed after its claim)


# Outcomes that are not a job run (``--max-jobs`` does not count them).
NOT_A_RUN: Final = frozenset(
    {JobOutcome.DUPLICATE, JobOutcome.PARKED, JobOutcome.OVER_QUOTA, JobOutcome.BUNDLED}
)


class Reason(StrEnum):
    """Why a request failed (``failure_reason``) or a message was dead-lettered
    (``x-bgworker-reason``). ``delivery_limit`` comes from RabbitMQ's own x-death."""

    MALFORMED_JSON = "malformed_json"
    INVALID_SCHEMA = "invalid_schema"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    UNKNOWN_FILE_TYPE = "unknown_file_type"
    UNSTORABLE = "unstorable"
    UNPROCESSABLE = "unprocessable"
    CONFLICTING_DUPLICATE = "conflicting_duplicate"
    PERMANENT_ERROR = "permanent_error"
    MAX_ATTEMPTS = "max_attempts"
    WORKER_LOST = "worker_lost"
    DELIVERY_LIMIT = "delivery_limit"
    OVER_QUOTA = "over_quota"  # its tenant's quota was used up (BGWORKER_FAIRNESS__OVER_QUOTA=fail)


# A request that failed for one of these never ran: a valid event published under the same
# id replaces it. Anything else that failed for good comes back only by replay.
SUPERSEDABLE: Final = frozenset(
    {
        Reason.INVALID_SCHEMA,
        Reason.UNSUPPORTED_SCHEMA_VERSION,
        Reason.MALFORMED_JSON,
        Reason.UNSTORABLE,
        # Refused for its tenant's quota, never run: published again later, it may run.
        Reason.OVER_QUOTA,
    }
)
