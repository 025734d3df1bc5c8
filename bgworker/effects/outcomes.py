"""The effects a state change causes: which outbox rows (kind, payload) a request that
became ready or failed gets. Pure functions of the updated row (and the deployment's
webhook URL); ``outbox`` carries the rows out after the commit.

A ready request always gets its FileReady event, and its email when the requester has an
address; a failed one its FileFailed and its failure email. A webhook goes to the request's
own ``callback_url`` when it has one, else to the deployment's ``webhooks.url`` when set:
never both, so a producer that names its receiver gets exactly one webhook per outcome.
A bundle's part gets no email of its own: its bundle's one email is written when the last
part ends.
"""

from __future__ import annotations

from typing import Any

from bgworker import store
from bgworker.contract import events, requester_texts, states
from bgworker.observe import tracing


def _requester(event: dict[str, Any]) -> dict[str, Any]:
    """The recorded event's requester, read as stored: it was validated when recorded, and
    validating it again against today's (possibly stricter) rules could make a request
    recorded by an older version impossible to finish."""
    requester = event.get("requester")
    return requester if isinstance(requester, dict) else {}


def _webhook(
    kind: states.EffectKind, common: dict[str, Any], url: object
) -> list[tuple[str, dict[str, Any]]]:
    """The webhook effect when a URL applies: the request's own ``callback_url``, else the
    deployment's ``webhooks.url``. The URL is kept in the payload: where it goes is decided
    when the outcome is committed, not changed by a later setting."""
    return [(kind, {**common, "url": url})] if isinstance(url, str) and url else []


def ready_effects(
    row: store.RequestRow, *, webhook_url: str | None
) -> list[tuple[str, dict[str, Any]]]:
    assert row.finished_at is not None and row.expires_at is not None
    requester = _requester(row.event)
    common = {
        "file_type": row.file_type,
        "filename": row.filename,
        "content_type": row.content_type,
        "description": str(row.event.get("description") or ""),
        "size": row.size_bytes,
        "sha256": row.sha256,
        "ready_at": row.finished_at.isoformat(),
        "expires_at": row.expires_at.isoformat(),
        "requester_id": row.requester_id,
        **_trace(),
    }
    effects: list[tuple[str, dict[str, Any]]] = [(states.EffectKind.EVENT_READY, common)]
    url = row.event.get("callback_url") or webhook_url
    effects += _webhook(states.EffectKind.WEBHOOK_READY, common, url)
    if row.bundle_id is not None:
        return effects + _part_ended(row)
    if requester.get("email"):
        effects.append(
            (
                states.EffectKind.EMAIL_READY,
                {
                    **common,
                    "to": requester["email"],
                    "language": requester.get("language") or "en",
                    "timezone": requester.get("timezone") or "UTC",
                },
            )
        )
    return effects


def _part_ended(row: store.RequestRow) -> list[tuple[str, dict[str, Any]]]:
    """A bundle's part sends no email of its own: the bundle sends one when its last part
    ended (``store.bundles``, which this pseudo-effect asks to look)."""
    return [(store.PART_ENDED, {"bundle_id": str(row.bundle_id)})]


def _trace() -> dict[str, Any]:
    """The job's trace context, kept in the payload so the effect's span (and the
    download's) join its trace; nothing when tracing is off."""
    found = tracing.carrier()
    return {tracing.TRACE_KEY: found} if found else {}


def failed_effects(
    row: store.RequestRow, *, webhook_url: str | None
) -> list[tuple[str, dict[str, Any]]]:
    assert row.finished_at is not None
    common = {
        "file_type": row.file_type or None,
        "filename": row.filename,
        "reason": row.failure_reason or "handler_error",
        "error_class": row.last_error_class or "",
        "error": row.last_error or "",
        "message": requester_texts.failure(row.failure_reason),
        "attempts": row.attempts,
        "failed_at": row.finished_at.isoformat(),
        **_trace(),
    }
    effects: list[tuple[str, dict[str, Any]]] = [(states.EffectKind.EVENT_FAILED, common)]
    try:
        requested = events.FileRequested.model_validate(row.event)
    except ValueError:
        # An invalid event: nobody trustworthy to email, and its callback_url is not to be
        # trusted either; the deployment's webhook still hears of it.
        return effects + _webhook(states.EffectKind.WEBHOOK_FAILED, common, webhook_url)
    url = requested.callback_url or webhook_url
    effects += _webhook(states.EffectKind.WEBHOOK_FAILED, common, url)
    if row.bundle_id is not None:
        return effects + _part_ended(row)
    if requested.requester and requested.requester.email:
        effects.append(
            (
                states.EffectKind.EMAIL_FAILED,
                {
                    **common,
                    # The email reaches the requester: no exception text in its context
                    # (the row, attempts and dead letter keep it). ``error`` stays a key
                    # for templates written against it, with the safe text.
                    "error_class": "",
                    "error": common["message"],
                    "to": requested.requester.email,
                    "language": requested.requester.language,
                    "description": requested.description,
                },
            )
        )
    return effects
