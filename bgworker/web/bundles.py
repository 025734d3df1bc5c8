"""``GET /bundle/{token}`` (the bundle's page, or its JSON) and ``GET/HEAD
/bundle/{token}/zip`` (its ready parts as one ZIP, with Range).

A bundle token is signed under a salt of its own (``tokens.Signer.for_bundles``): a
request's token never opens a bundle, nor a bundle's token a request. It follows the same
rules as a request's (canonical form, keys, age, binding to the requester); every refusal is
decided before anything about the bundle is read. The page lists each part with its progress
and, once ready, its own download link (a request token, as its own email would carry); the
ZIP holds the parts that are ready once no part is in progress any more (failed and
cancelled parts are left out, the page and the email say which).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC
from typing import Any, Final

from aiohttp import hdrs, web

from bgworker import languages, storage, store
from bgworker.contract import bundles as bundle_contract
from bgworker.contract import states
from bgworker.links import tokens
from bgworker.storage import zips
from bgworker.web import headers, identity, keys, pages, ranges, responses

PAGE_TEMPLATE: Final = "pages/bundle.html.j2"
_REFUSALS: Final = {
    tokens.SuspiciousTokenError: 400,
    tokens.SignatureExpiredError: 410,
    tokens.NotRequesterError: 403,
}


async def _bundle(request: web.Request) -> tuple[store.BundleRow, list[store.RequestRow]]:
    """The bundle the token names, with its parts; raises the refusal as an HTTP error."""
    token = request.match_info["token"]
    if request.rel_url.raw_path.split("/")[2] != token:  # one URL per grant, as downloads
        raise _refused(400, "this link is not valid")
    caller = await identity.caller(request.app[keys.IDENTITY], request)
    try:
        grant = request.app[keys.SIGNER].for_bundles().verify(token, caller)
    except tokens.TokenError as exc:
        raise _refused(_REFUSALS.get(type(exc), 400), str(exc)) from None
    db = request.app[keys.STORE]
    bundle = await db.bundles.get(grant.request_id)
    if bundle is None:
        # Signed by us, so published: no worker has recorded it yet.
        raise _refused(404, "the files are not ready yet: waiting in the queue")
    return bundle, await db.bundles.parts(bundle.id)


def _refused(status: int, message: str) -> web.HTTPException:
    return _error(status, {"error": message, "status": status})


def _error(status: int, body: dict[str, Any]) -> web.HTTPException:
    exc = web.HTTPException(headers=headers.SECURITY_HEADERS)
    exc.set_status(status)
    exc.content_type = "application/json"
    exc.text = responses.json_response(body, status=status).text
    return exc


def _in_progress(parts: list[store.RequestRow]) -> bool:
    return any(p.status in states.IN_PROGRESS for p in parts)


def _part_view(request: web.Request, part: store.RequestRow, locale: str) -> dict[str, Any]:
    link = None
    if part.status == states.Status.READY:
        token = request.app[keys.SIGNER].issue(
            part.id, requester_id=part.requester_id, generation=0
        )
        link = f"../download/{token}?{pages.FILE_PARAM}=1"
    return {
        "index": part.bundle_index,
        "filename": part.filename,
        "status": part.status.value,
        "percent": languages.format_percent(part.progress or 0.0, locale),
        "progress": part.progress or 0.0,
        "size": languages.format_size(part.size_bytes, locale) if part.size_bytes else None,
        "download_url": link,
    }


async def page(request: web.Request) -> web.StreamResponse:
    bundle, parts = await _bundle(request)
    requester = bundle.event.get("requester") or {}
    locale = languages.locale_for(str(requester.get("language") or "en"))
    views = [_part_view(request, p, locale) for p in parts]
    done = not _in_progress(parts)
    if not pages.wants_html(request):
        return responses.json_response(
            {"id": str(bundle.id), "done": done, "parts": views}, status=200
        )
    nonce = secrets.token_urlsafe(16)
    env = languages.environment(request.app[keys.TEMPLATE_DIR], locale)
    body = env.get_template(PAGE_TEMPLATE).render(
        language=locale.replace("_", "-"),
        nonce=nonce,
        description=str(bundle.event.get("description") or ""),
        parts=views,
        done=done,
        ready=sum(1 for v in views if v["status"] == "ready"),
        zip_name=bundle_contract.zip_name(bundle.event),
        zip_url=f"{request.match_info['token']}/zip",
        poll_ms=pages.POLL_MILLISECONDS * 2,
    )
    return web.Response(
        text=body,
        content_type="text/html",
        charset="utf-8",
        headers={
            **headers.SECURITY_HEADERS,
            "Content-Language": locale.replace("_", "-"),
            "Vary": "Accept, Accept-Language",
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": pages.csp(nonce),
        },
    )


def _members(parts: list[store.RequestRow]) -> list[zips.Member]:
    """The ready parts, each under its filename (the part's number before it when another
    part already has that name, as two parts of one file type without filenames would)."""
    members: list[zips.Member] = []
    seen: set[str] = set()
    for part in parts:
        if part.status != states.Status.READY or part.storage_key is None:
            continue
        name = part.filename
        if name in seen:
            name = f"{(part.bundle_index or 0) + 1}-{name}"
        seen.add(name)
        members.append(
            zips.Member(name, part.size_bytes or 0, part.storage_key, f'"{part.sha256}"')
        )
    return members


async def download_zip(request: web.Request) -> web.StreamResponse:
    bundle, parts = await _bundle(request)
    if _in_progress(parts):
        raise _error(409, {"error": "some files are not ready yet", "status": 409})
    members = _members(parts)
    if not members:
        raise _error(404, {"error": "none of these files could be made", "status": 404})
    modified = bundle.finished_at or bundle.created_at
    layout = zips.Layout(members, modified.astimezone(UTC))
    digest = hashlib.sha256(repr([(m.name, m.size, m.etag) for m in members]).encode())
    etag = f'"{digest.hexdigest()}.{int(modified.timestamp())}"'
    decision = ranges.decide(
        request.method,
        range_=request.headers.get(hdrs.RANGE),
        if_range=request.headers.get(hdrs.IF_RANGE),
        if_none_match=request.headers.get(hdrs.IF_NONE_MATCH),
        etag=etag,
        size=layout.size,
    )
    sent = {
        hdrs.CONTENT_TYPE: "application/zip",
        hdrs.CONTENT_DISPOSITION: headers.content_disposition(
            bundle_contract.zip_name(bundle.event)
        ),
        hdrs.ETAG: etag,
        hdrs.ACCEPT_RANGES: "bytes",
        **headers.SECURITY_HEADERS,
    }
    match decision:
        case ranges.NotModified():
            return web.Response(status=304, headers={hdrs.ETAG: etag, **headers.SECURITY_HEADERS})
        case ranges.Unsatisfiable():
            content_range = decision.content_range
            return web.Response(status=416, headers={hdrs.CONTENT_RANGE: content_range})
    response = web.StreamResponse(status=decision.status, headers=sent)
    start, end = 0, layout.size - 1
    if isinstance(decision, ranges.Part):
        start, end = decision.start, decision.end
        response.headers[hdrs.CONTENT_RANGE] = decision.content_range
    response.content_length = end - start + 1
    await response.prepare(request)
    if request.method != hdrs.METH_HEAD:
        files = request.app[keys.STORAGE]

        async def opened(member: zips.Member) -> storage.Source:
            return await files.source(member.key, size=member.size, etag=member.etag)

        chunk_size = request.app[keys.CHUNK_SIZE]
        # A part deleted behind its row after the headers went: the connection is cut short
        # (the client sees fewer bytes than Content-Length and may resume).
        async for chunk in zips.stream(layout, opened, start, end, chunk_size):
            await response.write(chunk)
    await response.write_eof()
    return response


def mount(app: web.Application) -> None:
    app.router.add_get("/bundle/{token}", page)
    app.router.add_get("/bundle/{token}/zip", download_zip)  # GET also answers HEAD

