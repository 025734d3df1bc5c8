"""``POST /erasures``: ``bgworker forget`` over HTTP, for the service that handles a
person's erasure request (GDPR article 17). Mounted with the front door (same API keys).

The address goes in the JSON body, ``{"requester": "ann@example.com"}`` (or a tenant,
``{"tenant": "acme"}``: every request that counts against it), never in the URL:
URLs end up in access logs. The answer is the erasure's report (counts and the audit row's
id), which names no one. Idempotent: a second call finds nothing more to erase (and still
records that it was asked).
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web

from bgworker import faults
from bgworker import settings as settings_mod
from bgworker.contract import events
from bgworker.ops import erasure
from bgworker.ops.deadletters import queue
from bgworker.web import front_door, keys, responses

log = logging.getLogger(__name__)

ROUTE: Final = "/erasures"
MAX_BODY_BYTES: Final = 4096
ACTOR: Final = "http:/erasures"


def mount(app: web.Application, settings: settings_mod.Settings) -> None:
    app[keys.DLQ_ADDRESS] = (
        settings.amqp_url.get_secret_value(),
        settings.namespace,
        settings.queue_type,
    )
    app.router.add_post(ROUTE, erase)


async def erase(request: web.Request) -> web.Response:
    raw = await front_door.json_body(request, MAX_BODY_BYTES)
    if isinstance(raw, web.Response):
        return raw
    try:
        # Strict JSON: ``{"requester": a, "requester": b}`` is refused, never read as b.
        body = events.decode_json(raw)
    except events.InvalidEventError as exc:
        return front_door.invalid(exc)
    try:
        if not isinstance(body, dict) or len(body.keys() & {"requester", "tenant"}) != 1:
            raise ValueError("a JSON object with one of requester and tenant is required")
        given = body.get("requester", body.get("tenant"))
        if not isinstance(given, str):
            raise ValueError("the field must be a string")
        parse = erasure.parse_requester if "requester" in body else erasure.parse_tenant
        subject = parse(given)
    except ValueError:
        return front_door.refusal(
            422, 'the body must be {"requester": "<email address>"} or {"tenant": "<tenant>"}'
        )
    try:
        report = await _forget(request, subject)
    except Exception as exc:
        if faults.is_infrastructure(exc) or isinstance(exc, queue.DlqError):
            return front_door.unavailable(exc, ROUTE)
        raise
    return responses.json_response(report.to_json(), status=200 if not report.errors else 207)


async def _forget(request: web.Request, subject: erasure.Subject) -> erasure.Report:
    url, namespace, queue_type = request.app[keys.DLQ_ADDRESS]
    dlq = queue.DeadLetterQueue(url, namespace, queue_type)
    try:
        await dlq.connect()
    except queue.DlqError as exc:
        if "does not exist" not in str(exc):  # no worker has declared it: no letters
            raise
        return await erasure.forget(
            request.app[keys.STORE], request.app[keys.STORAGE], None, subject, actor=ACTOR
        )
    async with dlq:
        return await erasure.forget(
            request.app[keys.STORE], request.app[keys.STORAGE], dlq, subject, actor=ACTOR
        )
