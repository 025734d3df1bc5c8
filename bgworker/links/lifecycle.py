"""Link lifecycle for operators: issue a fresh link, revoke every earlier one, resend the
email. Plain functions over ``Store`` and ``tokens.Signer`` (the admin console calls the
same ones), and the ``bgworker link``/``revoke``/``resend`` commands on top.

Revoking raises the request's link generation; every token carries the generation it was
issued under and the server refuses an older one (410, "revoked"). The file is not
touched, so a link issued afterwards works. Resending re-arms the request's email in the
outbox: the dispatcher's next sweep sends it once, with a link signed at that moment (so
after a revoke the resent email carries a working link), retrying like any effect.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from dataclasses import asdict, dataclass

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.links import tokens


def download_url(
    public_url: str,
    signer: tokens.Signer,
    request_id: uuid.UUID,
    requester_id: str | None,
    generation: int = 0,
) -> str:
    """The link put in emails and ``FileReady``, signed when sent: bound to the requester
    only in the link mode that binds (``tokens.binds_requester``), and under the request's
    current link generation, so an email resent after a revoke carries a working link."""
    token = signer.issue(request_id, requester_id=requester_id, generation=generation)
    return tokens.download_url(public_url, token)


@dataclass(frozen=True)
class Link:
    request_id: uuid.UUID
    url: str
    bound_to: str | None  # the requester id a bound link needs, None for a general link
    generation: int
    status_only: bool


async def issue(
    db: store.Store,
    signer: tokens.Signer,
    public_url: str,
    request_id: uuid.UUID,
    *,
    status_only: bool = False,
) -> Link | None:
    """A fresh link under the request's current generation (bound when the signer binds
    and the request has a requester id). A status-only link may name a request no worker
    has recorded yet; a download link needs the row. None: no such request."""
    found = await db.links.get_request_for_link(request_id)
    if found is None:
        if not status_only:
            return None
        requester_id, generation = None, 0
    else:
        requester_id, generation = found[0].requester_id, found[1]
    token = signer.issue(
        request_id, requester_id=requester_id, generation=generation, status_only=status_only
    )
    url = (tokens.status_link if status_only else tokens.download_url)(public_url, token)
    bound_to = requester_id if token.startswith(tokens.BOUND_PREFIX) else None
    return Link(request_id, url, bound_to, generation, status_only)


async def revoke(db: store.Store, request_id: uuid.UUID) -> int | None:
    """Invalidate every link issued so far for the request; the new generation, or None
    when the request is unknown."""
    return await db.links.revoke_links(request_id)


async def resend(db: store.Store, request_id: uuid.UUID) -> str | None:
    """Send the request's email again (ready or failed, as the request ended); the email
    kind, or None when there is nothing to resend."""
    return await db.links.resend_email(request_id)


# -- the commands ------------------------------------------------------------------------


async def run(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    async with store.opened(
        settings.database_url.get_secret_value(), pooler=settings.database_pooler
    ) as db:
        if args.command == "link":
            return await _link(settings, db, args)
        if args.command == "revoke":
            generation = await revoke(db, args.id)
            if generation is None:
                print(f"bgworker revoke: {args.id}: unknown request", file=sys.stderr)
                return 1
            print(f"{args.id}: every earlier link revoked (link generation {generation})")
            return 0
        kind = await resend(db, args.id)
        if kind is None:
            row = await db.requests.get_request(args.id)
            state = row.status if row else "unknown request"
            print(
                f"bgworker resend: {args.id}: no email to send again (status: {state}; a "
                "request without an email address, or whose email is not sent yet, has none)",
                file=sys.stderr,
            )
            return 1
        print(f"{args.id}: {kind} queued again (sent within the outbox interval)")
        return 0


async def _link(settings: settings_mod.Settings, db: store.Store, args: argparse.Namespace) -> int:
    signer = tokens.Signer(settings.tokens, bind=tokens.binds_requester(settings))
    link = await issue(db, signer, settings.web.public_url, args.id, status_only=args.status)
    if link is None:
        print(
            f"bgworker link: {args.id}: unknown request (use --status for a request not seen yet)",
            file=sys.stderr,
        )
        return 1
    if args.json:
        doc = {**asdict(link), "request_id": str(link.request_id)}
        doc["mode"] = "bound" if link.bound_to else "general"
        print(json.dumps(doc))
    else:
        print(link.url)
    return 0
