"""``POST /requests`` and ``DELETE /requests/{id}``: the HTTP front door, for services that
cannot speak AMQP.

Mounted only when ``BGWORKER_WEB__API_KEYS`` is set. The body is a ``FileRequested`` in
JSON, parsed by the worker's own parser (``events.parse_file_requested``), so the door
accepts exactly what a worker would. An accepted event is published to the requests
exchange with publisher confirms, and the answer (202) carries the status link.

Idempotent on the event's ``id``, with the worker's rule for a body published twice
(``events.differing_fields``): the same body again gets the same answer and is published
once; a different body under a known id is 409 and changes nothing. Before a worker has
recorded the request (it may wait in the queue), the door's own record
(``store.front_door``, migration 0011) answers; after, the request row does. The door
never writes ``bgworker_requests``: a row it made would lack what only the worker knows
(the handler's filename extension, content type and max attempts), so the worker records
the request as it does for any producer.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import math
import uuid
from typing import Any, Final

from aiohttp import web

from bgworker import faults, store
from bgworker import settings as settings_mod
from bgworker.contract import bundles, events, states
from bgworker.links import lifecycle, tokens
from bgworker.web import gateway, headers, keys, responses

log = logging.getLogger(__name__)

ROUTE: Final = "/requests"
BUNDLES_ROUTE: Final = "/bundles"
# The worker's own bound on a message body: a bigger one could never be accepted.
MAX_BODY_BYTES: Final = events.MAX_BODY_BYTES
READ_CHUNK: Final = 64 * 1024
# Seconds a client should wait after a 503 (RabbitMQ or PostgreSQL away).
RETRY_AFTER_SECONDS: Final = 5
# Decisions a POST may take when `bgworker clean` drops the door's record under it (each
# time, the worker's row has appeared meanwhile, and the next decision answers from it).
DECISIONS: Final = 3
# RFC 6750 section 3: the challenge of a Bearer-protected resource.
CHALLENGE: Final = 'Bearer realm="bgworker"'


def mount(app: web.Application, settings: settings_mod.Settings) -> None:
    """Add ``POST /requests`` and the RabbitMQ connection it publishes through."""
    # Only digests are kept: compare_digest of equal-length values takes the same time
    # whichever byte differs, and whichever key (RFC 6750 section 5.2 asks for it).
    app[keys.API_KEYS] = tuple(_digest(k.get_secret_value()) for k in settings.web.api_keys)
    app[keys.GATEWAY] = gateway.Gateway(settings)
    app[keys.FAIRNESS] = settings.fairness

    async def close_gateway(app: web.Application) -> None:
        await app[keys.GATEWAY].close()

    app.on_cleanup.append(close_gateway)
    app.router.add_post(ROUTE, create_request)
    app.router.add_delete(ROUTE + "/{id}", cancel_request)
    app.router.add_post(BUNDLES_ROUTE, create_bundle)
    app.router.add_delete(BUNDLES_ROUTE + "/{id}", cancel_request)  # a bundle's id: its parts
    log.info("POST %s is on (%d API key(s))", ROUTE, len(app[keys.API_KEYS]))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def authorized(header: str | None, digests: tuple[bytes, ...]) -> bool | None:
    """True: a valid key. False: a key we do not hold. None: no Bearer credentials."""
    if header is None:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    given = _digest(credentials.strip())
    found = False
    for digest in digests:  # every key is compared, found or not: no early exit
        found |= hmac.compare_digest(given, digest)
    return found


def refusal(
    status: int, error: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    return responses.json_response(
        {"error": error, "status": status, **extra}, status=status, headers=headers
    )


def unavailable(exc: Exception, route: str = ROUTE) -> web.Response:
    """503 with Retry-After: RabbitMQ or PostgreSQL is away (``faults.is_infrastructure``)."""
    log.warning("POST %s: a service is away: %s: %s", route, type(exc).__name__, exc)
    return refusal(
        503,
        "the service is unavailable; retry the same body later",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The body, or None when it is longer than ``limit`` bytes (read no further)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: web.Request, limit: int = MAX_BODY_BYTES) -> bytes | web.Response:
    """The body of a POST to the front door (``/requests``, ``/bundles``, ``/schedules``,
    ``/erasures``), or the refusal that answers it: 401 without an API key, 415 unless JSON
    in UTF-8, 413 over ``limit`` bytes (read no further)."""
    refused = refuse_caller(request)
    if refused is not None:
        return refused
    charset = (request.charset or "utf-8").lower()
    if request.content_type != "application/json" or charset != "utf-8":
        return refusal(415, "the body must be application/json in UTF-8")
    body = await _read_body(request, limit)
    if body is None:
        return refusal(413, f"the body is larger than {limit} bytes")
    return body


def invalid(exc: events.InvalidEventError) -> web.Response:
    """RFC 9110: 400 for what is not JSON at all, 422 for JSON that is not the event; the
    problems as a list of ``{location, message}``."""
    status = 400 if exc.reason == states.Reason.MALFORMED_JSON else 422
    errors = [{"location": where, "message": message} for where, message in exc.errors]
    return refusal(status, str(exc), reason=exc.reason, errors=errors)


async def create_request(request: web.Request) -> web.Response:
    body = await json_body(request)
    if isinstance(body, web.Response):
        return body
    try:
        event = events.parse_file_requested(body)
    except events.InvalidEventError as exc:
        return invalid(exc)
    try:
        for _ in range(DECISIONS - 1):
            with contextlib.suppress(store.VanishedError):
                return await _accept(request, event)
        return await _accept(request, event)
    except Exception as exc:
        if faults.is_infrastructure(exc):
            return unavailable(exc)
        raise


async def create_bundle(request: web.Request) -> web.Response:
    """``POST /bundles``: a ``BundleRequested``, published (idempotent by its id: the worker
    records a bundle once). 202 with the bundle's page link, for the requester."""
    body = await json_body(request)
    if isinstance(body, web.Response):
        return body
    try:
        bundle = bundles.parse_bundle_requested(body)
    except events.InvalidEventError as exc:
        return invalid(exc)
    try:
        await request.app[keys.GATEWAY].publish_bundle(bundle)
    except Exception as exc:
        if faults.is_infrastructure(exc):
            return unavailable(exc, BUNDLES_ROUTE)
        raise
    requester_id = bundle.requester.id if bundle.requester else None
    token = request.app[keys.SIGNER].for_bundles().issue(bundle.id, requester_id=requester_id)
    url = tokens.bundle_url(request.app[keys.PUBLIC_URL], token)
    parts = [str(bundles.part_id(bundle.id, i)) for i in range(len(bundle.parts))]
    answer = {"id": str(bundle.id), "parts": parts, "bundle_url": url}
    return responses.json_response(answer, status=202, headers={"Location": url})


def refuse_caller(request: web.Request) -> web.Response | None:
    """401 unless the request carries one of the API keys."""
    ok = authorized(request.headers.get("Authorization"), request.app[keys.API_KEYS])
    if ok:
        return None
    challenge = CHALLENGE if ok is None else f'{CHALLENGE}, error="invalid_token"'
    return refusal(401, "an API key is required", headers={"WWW-Authenticate": challenge})


async def cancel_request(request: web.Request) -> web.Response:
    """``DELETE /requests/{id}``: a producer's cancel, idempotent, with the CLI's rule
    (``Requests.cancel_or_placeholder``). 200: cancelled (now, before, or before it even
    came); 202: running, stops at its next lease renewal; 409: already ended otherwise."""
    refused = refuse_caller(request)
    if refused is not None:
        return refused
    try:
        request_id = uuid.UUID(request.match_info["id"])
    except ValueError:
        return refusal(404, "no such request: the id is not a UUID")
    try:
        result = await request.app[keys.STORE].requests.cancel_or_placeholder(request_id)
    except Exception as exc:
        if faults.is_infrastructure(exc):
            return unavailable(exc)
        raise
    body: dict[str, Any] = {
        "id": str(request_id),
        "status": result.status.value,
        "cancel_requested": result.cancel_requested,
    }
    if result.status == states.Status.CANCELLED:
        log.info("DELETE %s/%s: cancelled", ROUTE, request_id)
        return responses.json_response(body)
    if result.status == states.Status.RUNNING and result.cancel_requested:
        return responses.json_response(body, status=202)
    # "status" is the HTTP status in a refusal: the request's goes as "request_status".
    return refusal(
        409,
        f"request {request_id} has ended ({result.status}): nothing to cancel",
        id=str(request_id),
        request_status=result.status.value,
    )


async def _accept(request: web.Request, event: events.FileRequested) -> web.Response:
    db = request.app[keys.STORE]
    row = await db.requests.get_request(event.id)
    # A request the worker recorded answers from its row, unless it is the failed record
    # of an invalid body under this id: a valid event supersedes it (the worker's rule).
    if row is not None and not (
        row.status == states.Status.FAILED and row.failure_reason in states.SUPERSEDABLE
    ):
        if not row.body_kept:  # cancelled before it came, or scrubbed: nothing to compare
            return await _accepted(request, event, row.status)
        differ = events.differing_fields(row.event, event)
        if differ:
            return _conflict(event, differ, row.status)
        return await _accepted(request, event, row.status)
    tenant = events.tenant_of(event)
    limits = request.app[keys.FAIRNESS]
    # A quota counts new requests only: a repeated POST is answered as before.
    if limits.quotas() and row is None and not await db.front_door.known(event.id):
        over = await db.fairness.over_quota(tenant, limits)
        if over is not None:
            return _over_quota(tenant, over)
    reserved = await db.front_door.reserve(event.id, event.model_dump(mode="json"), tenant)
    differ = events.differing_fields(reserved.event, event)
    if differ:
        return _conflict(event, differ, None)
    if reserved.published_at is None:
        async with db.front_door.publishing(event.id) as locked:
            if locked.published_at is None:  # not by a POST this one waited for
                # The recorded body, the same as an earlier POST may have sent (its confirm
                # lost, answered 503): a worker sees a duplicate, never a conflict.
                recorded = events.FileRequested.model_validate(locked.event)
                await request.app[keys.GATEWAY].publish(recorded)
                await locked.mark_published()
                log.info("POST %s: request %s published", ROUTE, event.id)
    return await _accepted(request, event, None)


def _over_quota(tenant: str, over: store.OverQuota) -> web.Response:
    """429 with Retry-After (RFC 6585 section 4) and an RFC 9457 problem naming the quota.
    A request already accepted under the same id is answered from its record, never this."""
    retry_after = math.ceil(over.retry_after)
    problem = {
        "type": "https://bgworker.invalid/problems/over-quota",
        "title": "the tenant's request quota is used up",
        "status": 429,
        "detail": (
            f"tenant {tenant!r} made {over.used} requests {over.quota.replace('_', ' ')}, "
            f"its quota is {over.limit}; the next one fits in {retry_after}s"
        ),
        "quota": over.quota,
        "limit": over.limit,
        "used": over.used,
        "tenant": tenant,
        "retry_after": retry_after,
    }
    return web.Response(
        text=responses.dumps(problem),
        status=429,
        content_type="application/problem+json",
        headers={**headers.SECURITY_HEADERS, "Retry-After": str(retry_after)},
    )


def _conflict(
    event: events.FileRequested, differ: list[str], status: states.Status | None
) -> web.Response:
    where = f"({status})" if status else "(accepted, not yet taken by a worker)"
    return refusal(
        409,
        f"request {event.id} is already recorded {where} with a different body "
        f"(fields that differ: {', '.join(differ)}); the recorded request is unchanged",
        reason=states.Reason.CONFLICTING_DUPLICATE.value,
        fields=differ,
        id=str(event.id),
    )


async def _accepted(
    request: web.Request, event: events.FileRequested, status: states.Status | None
) -> web.Response:
    app = request.app
    signer, public_url = app[keys.SIGNER], app[keys.PUBLIC_URL]
    link = None
    if status is not None:
        # Under the row's link generation (a revoked request's old links stay revoked).
        link = await lifecycle.issue(
            app[keys.STORE], signer, public_url, event.id, status_only=True
        )
    if link is not None:
        url = link.url
    else:
        # Not recorded by a worker yet: bound to the event's requester as the worker will
        # record it (tokens.status_url's rule).
        requester_id = event.requester.id if event.requester else None
        token = signer.issue(event.id, requester_id=requester_id, status_only=True)
        url = tokens.status_link(public_url, token)
    body = {
        "id": str(event.id),
        "status": (status or states.Status.QUEUED).value,
        "status_url": url,
    }
    return responses.json_response(body, status=202, headers={"Location": url})
