"""The admin console under ``/admin/``: dead letters (list, detail, replay, purge),
requests by status, search and a request's page (``admin_requests``), as server-rendered
HTML and as JSON under ``/admin/api/``.

Mounted by ``create_app`` only when ``BGWORKER_WEB__ADMIN_PASSWORD`` is set. Every page
reads the broker afresh with the same non-destructive scan as ``bgworker dlq list``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp_jinja2
import jinja2
from aiohttp import web

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import states
from bgworker.messaging import wire
from bgworker.ops.deadletters import actions, letters, queue, reading, selection
from bgworker.web import admin_auth, admin_requests, admin_schedules, keys

STATUSES: Final = (
    states.Status.QUEUED,
    states.Status.PARKED,
    states.Status.RUNNING,
    states.Status.RETRYING,
    states.Status.FAILED,
    states.Status.READY,
)
TENANTS_SHOWN: Final = 20  # the busiest tenants on the requests page
PAGE_LIMIT: Final = 1000  # letters rendered on one page; the counts cover all of them
ACTIONS: Final = ("replay", "purge")


def create_admin(settings: settings_mod.Settings) -> web.Application:
    assert settings.web.admin_password is not None
    web_settings = settings.web
    key = web_settings.admin_secret_key
    auth = admin_auth.Auth(
        web_settings.admin_user,
        settings.web.admin_password.get_secret_value(),
        web_settings.admin_session_seconds,
        secret_key=key.get_secret_value() if key is not None else None,
        secure_cookies=web_settings.admin_secure_cookies,
        trusted_proxies=web_settings.trusted_proxies,
    )
    guard = admin_auth.middleware(auth, frozenset({"/admin/login"}), _db)
    app = web.Application(middlewares=[guard])
    app[keys.ADMIN_AUTH] = auth
    app[keys.ADMIN_AMQP] = (
        settings.amqp_url.get_secret_value(),
        settings.namespace,
        settings.queue_type,
    )
    app[keys.FAIRNESS] = settings.fairness
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("bgworker", "templates/admin"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env = aiohttp_jinja2.get_env(app)
    env.filters["when"] = lambda v: v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if v else "-"
    # Templates name states, results and headers by these, never by literals.
    env.globals.update(Status=states.Status, Result=actions.Result, TRACEBACK_HEADER=wire.TRACEBACK)
    app.router.add_get("/", index)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/dead-letters", dead_letters_page)
    app.router.add_get("/dead-letters/{key}", letter_page)
    app.router.add_post("/dead-letters/action", letter_action)
    app.router.add_get("/requests", requests_page)
    app.router.add_get("/api/dead-letters", dead_letters_json)
    app.router.add_get("/api/dead-letters/stats", stats_json)
    app.router.add_get("/api/dead-letters/{key}", letter_json)
    app.router.add_get("/api/requests", requests_json)
    admin_requests.add_routes(app)
    admin_schedules.add_routes(app)
    return app


user_of: Final = admin_requests.user_of
render: Final = admin_requests.render


def _db(request: web.Request) -> store.Store:
    return request.config_dict[keys.STORE]


@contextlib.asynccontextmanager
async def _dlq(request: web.Request) -> AsyncIterator[queue.DeadLetterQueue]:
    url, namespace, queue_type = request.app[keys.ADMIN_AMQP]
    try:
        async with queue.DeadLetterQueue(url, namespace, queue_type) as q:
            yield q
    except queue.DlqError as exc:
        if "/api/" in request.path:
            raise web.HTTPServiceUnavailable(
                text=_json_text({"error": str(exc)}), content_type="application/json"
            ) from exc
        response = render("error.html.j2", request, {"error": str(exc)}, status=503)
        raise web.HTTPServiceUnavailable(text=response.text, content_type="text/html") from exc


def _selection(query: Any) -> selection.Selection:
    """Filters from a query string or form; a bad age is a 400, not a crash."""

    def text(name: str) -> str | None:
        value = query.get(name)
        return value.strip() if isinstance(value, str) and value.strip() else None

    try:
        older = selection.parse_age(v) if (v := text("older_than")) else None
        newer = selection.parse_age(v) if (v := text("newer_than")) else None
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from exc
    return selection.Selection(
        file_type=text("file_type"),
        error_class=text("error_class"),
        reason=text("reason"),
        older_than=older,
        newer_than=newer,
    )


def _filters(query: Any) -> dict[str, str]:
    names = ("file_type", "error_class", "reason", "older_than", "newer_than")
    return {n: str(query.get(n, "")).strip() for n in names}


# -- login ------------------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/admin/dead-letters")


async def login_form(request: web.Request, *, error: str = "") -> web.StreamResponse:
    auth = request.app[keys.ADMIN_AUTH]
    response = web.Response(content_type="text/html")
    nonce = auth.login_nonce(request, response)
    context = {
        "login_csrf": auth.login_csrf_token(nonce),
        "error": error,
        "user": None,
        "path": "",
    }
    response.text = aiohttp_jinja2.render_string("login.html.j2", request, context)
    if error:
        response.set_status(401)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    auth = request.app[keys.ADMIN_AUTH]
    form = await request.post()
    token = form.get("csrf")
    nonce = auth.login_nonce(request, None)
    if not auth.login_csrf_ok(token if isinstance(token, str) else None, nonce):
        return web.Response(status=403, text="403: missing or invalid CSRF token")
    user, password = str(form.get("user", "")), str(form.get("password", ""))
    client = auth.client(request)
    if not await auth.check_password(_db(request), client, user, password):  # 429 if throttled
        return await login_form(request, error="Wrong user or password.")
    response = web.HTTPSeeOther("/admin/dead-letters")
    await auth.new_session(_db(request), response, request)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther("/admin/login")
    await request.app[keys.ADMIN_AUTH].end_session(_db(request), request, response)
    raise response


# -- dead letters -----------------------------------------------------------------------


async def _grouped(
    request: web.Request,
) -> tuple[reading.Stats, dict[str, list[letters.Letter]]]:
    stats = reading.Stats()
    groups: dict[str, list[letters.Letter]] = {}
    async with _dlq(request) as q:
        async for letter in reading.matching(q, _selection(request.query)):
            stats.add(letter)
            if stats.total <= PAGE_LIMIT:
                groups.setdefault(letter.error_class, []).append(letter)
    return stats, groups


async def dead_letters_page(request: web.Request) -> web.Response:
    stats, groups = await _grouped(request)
    counts = {ec: 0 for ec in groups}
    for (_, ec), n in stats.by_group.items():
        counts[ec] = counts.get(ec, 0) + n
    context = {
        "stats": stats,
        "groups": sorted(groups.items(), key=lambda kv: -counts[kv[0]]),
        "counts": counts,
        "filters": _filters(request.query),
        "limit": PAGE_LIMIT,
        "now": datetime.now(UTC),
    }
    return render("dead_letters.html.j2", request, context)


async def _detail(request: web.Request) -> dict[str, Any]:
    key = request.match_info["key"]
    async with _dlq(request) as q:
        found = await reading.show(q, key)
    if found is None:
        raise web.HTTPNotFound(text=f"no dead letter {key}")
    found["request"] = None
    found["dlq_actions"] = []
    if found.get("request_id"):
        request_id = uuid.UUID(found["request_id"])
        db = _db(request)
        row = await db.requests.get_request(request_id)
        if row is not None:
            marks = await db.dead_letters.request_marks(request_id)
            found["request"] = letters.plain(row.to_json() | marks)
        history = await db.dead_letters.list_actions(request_id)
        found["dlq_actions"] = letters.plain(history)
    return found


async def letter_page(request: web.Request) -> web.Response:
    return render("letter.html.j2", request, {"letter": await _detail(request)})


async def letter_action(request: web.Request) -> web.StreamResponse:
    """One form, three scopes: ``action`` is ``replay|purge:one|selected|group[:arg]``."""
    form = await request.post()
    action, _, rest = str(form.get("action", "")).partition(":")
    scope, _, arg = rest.partition(":")
    if action not in ACTIONS or scope not in ("one", "selected", "group"):
        raise web.HTTPBadRequest(text="unknown action")
    base = _selection(form)
    if scope == "one":
        chosen = selection.Selection(ids=frozenset({arg}))
    elif scope == "selected":
        ids = frozenset(str(v) for v in form.getall("id", []))
        if not ids:
            return _render_outcome(request, None, "Nothing selected.")
        chosen = selection.Selection(ids=ids)
    else:
        chosen = selection.Selection(
            file_type=base.file_type,
            error_class=arg,
            reason=base.reason,
            older_than=base.older_than,
            newer_than=base.newer_than,
        )
    actor = f"web:{user_of(request)}"
    async with _dlq(request) as q:
        if action == "purge" and form.get("confirm") != "yes":
            preview = await actions.purge(q, _db(request), chosen, actor=actor, dry_run=True)
            fields = [(k, str(v)) for k, v in form.items() if k != "csrf"]
            return render("confirm.html.j2", request, {"preview": preview, "fields": fields})
        if action == "replay":
            force = form.get("force") == "yes"
            report = await actions.replay(q, _db(request), chosen, actor=actor, force=force)
        else:
            report = await actions.purge(q, _db(request), chosen, actor=actor)
    return _render_outcome(request, report, "")


def _render_outcome(request: web.Request, report: actions.Report | None, note: str) -> web.Response:
    return render("outcome.html.j2", request, {"report": report, "note": note})


# -- requests ---------------------------------------------------------------------------


async def _requests(request: web.Request) -> dict[str, Any]:
    wanted = request.query.get("status")
    selected = states.Status(wanted) if wanted in STATUSES else None
    statuses = (selected,) if selected is not None else STATUSES
    limit = 200 if wanted else 25
    db = _db(request)
    return {
        "counts": await db.maintenance.count_by_status(),
        "rows": {s: await db.listing.requests_by_status(s, limit) for s in statuses},
        "statuses": STATUSES,
        "selected": selected,
        # The busiest tenants (fair share): running, parked and queued, with their caps.
        "tenants": [
            {**vars(t), "cap": request.app[keys.FAIRNESS].tenant_cap(t.tenant)}
            for t in await db.fairness.tenant_counts(limit=TENANTS_SHOWN)
        ],
    }


async def requests_page(request: web.Request) -> web.Response:
    return render("requests.html.j2", request, await _requests(request))


# -- JSON -------------------------------------------------------------------------------


def _json_text(data: Any) -> str:
    """Strict JSON whatever a letter held (no NaN, no lone surrogates: see
    ``deadletters.letters``): every JSON body of the console is made here."""
    return letters.dumps(data)


def _json(data: Any) -> web.Response:
    return web.json_response(data, dumps=_json_text)


async def dead_letters_json(request: web.Request) -> web.Response:
    stats, groups = await _grouped(request)
    summaries = [letter.to_json() for group in groups.values() for letter in group]
    return _json(
        {"stats": stats.to_json(), "letters": summaries, "truncated": stats.total > PAGE_LIMIT}
    )


async def stats_json(request: web.Request) -> web.Response:
    async with _dlq(request) as q:
        result = await reading.stats(q, _selection(request.query))
    return _json(result.to_json())


async def letter_json(request: web.Request) -> web.Response:
    return _json(await _detail(request))


async def requests_json(request: web.Request) -> web.Response:
    data = await _requests(request)
    return _json(data["counts"] | {"rows": data["rows"], "tenants": data["tenants"]})
