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
import uuid
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import hdrs, web

from bgworker import languages, storage, store
from bgworker.contract import bundles as bundle_contract
from bgworker.contract import states
from bgworker.links import tokens
from bgworker.storage import zips
from bgworker.web import headers, identity, keys, pages, ranges, responses

PAGE_TEMPLATE: Final = "pages/bundle.html.j2"
# The page reloads itself this often while a part is in progress (a meta refresh: no script).
REFRESH_SECONDS: Final = 2
# A token refused: its HTTP status and the requester page's kind, as downloads answers.
_REFUSALS: Final[dict[type[tokens.TokenError], tuple[int, pages.Kind]]] = {
    tokens.SuspiciousTokenError: (400, pages.Kind.INVALID),
    tokens.SignatureExpiredError: (410, pages.Kind.EXPIRED),
    tokens.NotRequesterError: (403, pages.Kind.NOT_YOURS),
}
_INVALID: Final = (400, pages.Kind.INVALID)


class _Refused(Exception):
    def __init__(self, status: int, kind: pages.Kind, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind

    def answer(self, request: web.Request, *, html: bool) -> web.StreamResponse:
        if html and self.kind == pages.Kind.WAITING:
            # Not recorded yet: the bundle's own page, no parts yet, refreshing itself.
            locale = languages.from_accept_language(request.headers.get(hdrs.ACCEPT_LANGUAGE))
            return _render(request, locale, {}, [], status=self.status)
        if html:
            return pages.render(request, pages.State(self.kind, self.status))
        body = {"error": str(self), "status": self.status}
        return responses.json_response(body, status=self.status)


async def _bundle(request: web.Request) -> tuple[store.BundleRow, list[store.RequestRow]]:
    """The bundle the token names, with its parts; raises ``_Refused``."""
    token = request.match_info["token"]
    if request.rel_url.raw_path.split("/")[2] != token:  # one URL per grant, as downloads
        raise _Refused(*_INVALID, "this link is not valid")
    caller = await identity.caller(request.app[keys.IDENTITY], request)
    try:
        grant = request.app[keys.SIGNER].for_bundles().verify(token, caller)
    except tokens.TokenError as exc:
        raise _Refused(*_REFUSALS.get(type(exc), _INVALID), str(exc)) from None
    db = request.app[keys.STORE]
    bundle = await db.bundles.get(grant.request_id)
    if bundle is None:
        # Signed by us, so published: no worker has recorded it yet.
        message = "the files are not ready yet: waiting in the queue"
        raise _Refused(404, pages.Kind.WAITING, message)
    return bundle, await db.bundles.parts(bundle.id)


def _in_progress(parts: list[store.RequestRow]) -> bool:
    return any(p.status in states.IN_PROGRESS for p in parts)


async def _part_view(
    request: web.Request, part: store.RequestRow, locale: str, *, html: bool
) -> dict[str, Any]:
    """A part as the page and the JSON show it; a ready one with its own download link,
    signed as its email would be (its link generation: a revoked part's link is refused)."""
    link = None
    if part.status == states.Status.READY:
        generation = await request.app[keys.STORE].links.link_generation(part.id)
        token = request.app[keys.SIGNER].issue(
            part.id, requester_id=part.requester_id, generation=generation or 0
        )
        # The page links relative to itself (a proxy's path prefix is kept); JSON absolute.
        link = (
            f"../download/{token}?{pages.FILE_PARAM}=1"
            if html
            else tokens.download_url(request.app[keys.PUBLIC_URL], token)
        )
    return {
        "id": str(part.id),
        "index": part.bundle_index,
        "filename": part.filename,
        "status": part.status.value,
        "percent": languages.format_percent(part.progress or 0.0, locale),
        "progress": part.progress or 0.0,
        "size": languages.format_size(part.size_bytes, locale) if part.size_bytes else None,
        "size_bytes": part.size_bytes,
        "download_url": link,
    }


async def page(request: web.Request) -> web.StreamResponse:
    try:
        bundle, parts = await _bundle(request)
    except _Refused as refused:
        return refused.answer(request, html=pages.wants_html(request))
    requester = bundle.event.get("requester") or {}
    locale = languages.locale_for(str(requester.get("language") or "en"))
    html = pages.wants_html(request)
    views = [await _part_view(request, p, locale, html=html) for p in parts]
    if not html:
        done = not _in_progress(parts)
        token = request.match_info["token"]
        zip_url = tokens.bundle_url(request.app[keys.PUBLIC_URL], token) + "/zip"
        body = {"id": str(bundle.id), "done": done, "parts": views, "zip_url": zip_url}
        return responses.json_response(body, status=200)
    return _render(request, locale, bundle.event, views, status=200)


def _render(
    request: web.Request,
    locale: str,
    event: dict[str, Any],
    views: list[dict[str, Any]],
    *,
    status: int,
) -> web.Response:
    """The bundle's page: the requester page's headers (CSP with a nonce, no framing,
    no-store), its language; it refreshes itself while a part is in progress."""
    nonce = secrets.token_urlsafe(16)
    env = languages.environment(request.app[keys.TEMPLATE_DIR], locale)
    done = bool(views) and not any(v["status"] in states.IN_PROGRESS for v in views)
    body = env.get_template(PAGE_TEMPLATE).render(
        language=locale.replace("_", "-"),
        nonce=nonce,
        description=str(event.get("description") or ""),
        parts=views,
        done=done,
        ready=sum(1 for v in views if v["status"] == states.Status.READY),
        zip_name=bundle_contract.zip_name(event),
        zip_url=f"{request.match_info['token']}/zip",
        refresh_seconds=REFRESH_SECONDS,
    )
    return web.Response(
        text=body,
        status=status,
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


def _members(parts: list[store.RequestRow], crcs: dict[uuid.UUID, int]) -> list[zips.Member]:
    """The ready parts, each under its filename (the part's number before it when another
    part already has that name, as two parts of one file type without filenames would),
    with the CRC-32 an earlier stream recorded."""
    members: list[zips.Member] = []
    seen: set[str] = set()
    now = datetime.now(UTC)
    for part in parts:
        if part.status != states.Status.READY or part.storage_key is None:
            continue
        if part.expires_at is not None and part.expires_at <= now:
            continue  # past its lifetime, though `clean` has not marked it expired yet
        name = part.filename
        if name in seen:
            name = f"{(part.bundle_index or 0) + 1}-{name}"
        seen.add(name)
        etag = f'"{part.sha256}"'
        size = part.size_bytes or 0
        members.append(zips.Member(name, size, part.storage_key, etag, crcs.get(part.id)))
    return members


async def download_zip(request: web.Request) -> web.StreamResponse:
    try:
        bundle, parts = await _bundle(request)
        if _in_progress(parts):
            raise _Refused(409, pages.Kind.IN_PROGRESS, "some files are not ready yet")
        db = request.app[keys.STORE]
        members = _members(parts, await db.bundles.crcs(bundle.id))
        if not members:
            raise _Refused(404, pages.Kind.FAILED, "none of these files is ready")
    except _Refused as refused:
        return refused.answer(request, html=False)
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
    files = request.app[keys.STORAGE]
    # Every part's bytes still stored, checked before any header goes: a part removed behind
    # its row (an operator, `clean` at its expiry) is a 410, as a single download's is.
    for member in members:
        if not await files.exists(member.key):
            body = {"error": "a file of this bundle is no longer stored", "status": 410}
            return responses.json_response({**body, "state": "gone"}, status=410)
    await response.prepare(request)
    if request.method != hdrs.METH_HEAD:
        await _send(request, response, layout, parts, start, end)
    await response.write_eof()
    return response


async def _send(
    request: web.Request,
    response: web.StreamResponse,
    layout: zips.Layout,
    parts: list[store.RequestRow],
    start: int,
    end: int,
) -> None:
    """Bytes ``start``..``end`` of the ZIP, from the storage backend, recording the CRC-32s
    the stream computed."""
    files, db = request.app[keys.STORAGE], request.app[keys.STORE]
    by_key = {p.storage_key: p for p in parts}

    async def opened(member: zips.Member) -> storage.Source:
        return await files.source(member.key, size=member.size, etag=member.etag)

    async def record(member: zips.Member, crc: int) -> None:
        # Later ranges that need it (a resume near the end) read none of the part for it.
        part = by_key[member.key]
        await db.bundles.record_crc(part.id, crc, part.sha256 or "")

    # A part deleted after the check (a race): the connection is cut short, the client sees
    # fewer bytes than Content-Length and may resume.
    chunk_size = request.app[keys.CHUNK_SIZE]
    async for chunk in zips.stream(layout, opened, start, end, chunk_size, record):
        await response.write(chunk)


def mount(app: web.Application) -> None:
    app.router.add_get("/bundle/{token}", page)
    app.router.add_get("/bundle/{token}/zip", download_zip)  # GET also answers HEAD
