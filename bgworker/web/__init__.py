"""The aiohttp application: downloads, status, health, metrics and, if configured, admin
and ``POST /requests``."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from bgworker import settings as settings_mod
from bgworker import storage, store
from bgworker.links import tokens
from bgworker.observe import metrics, tracing
from bgworker.web import (
    access_log,
    bundles,
    downloads,
    keys,
    my_files,
    responses,
    supervisor,
    unsubscribe,
)
from bgworker.web import identity as identity_mod

log = logging.getLogger(__name__)

__all__ = ["create_app", "serve"]


# A load balancer's probe must get an answer before its own timeout, database or not.
HEALTH_TIMEOUT_SECONDS: Final = 2.0


async def healthz(request: web.Request) -> web.Response:
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
            await request.app[keys.STORE].maintenance.ping()
    except Exception as exc:
        return responses.json_response({"status": "unhealthy", "database": str(exc)}, status=503)
    # The pid tells which of `serve --workers N`'s processes answered.
    return responses.json_response({"status": "ok", "pid": os.getpid()})


# Seconds a client should wait after a 503 for an object store that does not answer.
STORAGE_RETRY_AFTER: Final = "30"


@web.middleware
async def storage_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An object store that is down or hung (past ``s3_timeout_seconds``) answers 503 with
    Retry-After, as PostgreSQL away does on /healthz: a 500 would read as a bug, and a 410
    as a file that is gone for good."""
    try:
        return await handler(request)
    except storage.StorageUnavailableError as exc:
        log.warning("%s %s: %s", request.method, request.rel_url.path.split("/")[1], exc)
        body = {"error": "the file storage is unavailable", "status": 503, "state": "unavailable"}
        headers = {"Retry-After": STORAGE_RETRY_AFTER}
        return responses.json_response(body, status=503, headers=headers)


# The methods counted by name; any other (a tchar sequence of the client's choosing) is
# "other", and a path no route matches is "unmatched": the labels stay a short list.
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``bgworker_http_requests_total`` and ``..._in_flight``: every request a route or the
    router answers (a line aiohttp cannot parse never gets this far)."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    method = request.method if request.method in _METHODS else "other"
    status = "500"  # what aiohttp answers for an exception of a handler
    metrics.HTTP_IN_FLIGHT.inc()
    try:
        response = await handler(request)
        status = str(response.status)
        return response
    except web.HTTPException as exc:
        status = str(exc.status)
        raise
    except asyncio.CancelledError:
        status = "cancelled"
        raise
    finally:
        metrics.HTTP_IN_FLIGHT.dec()
        metrics.HTTP_REQUESTS.labels(route, method, status).inc()


async def metrics_view(request: web.Request) -> web.Response:
    # The server's own registry only: the worker's series live in the worker processes.
    # Under `serve --workers N`, summed over the N processes (metrics.exposition).
    return metrics.exposition(metrics.SERVER)


def create_app(
    settings: settings_mod.Settings,
    *,
    identity: identity_mod.Identity | None = None,
    db: store.Store | None = None,
) -> web.Application:
    """``identity`` names the caller for requester-bound links (default: the trusted header
    ``settings.web.identity_header``, if set). ``db`` lets an embedding app share its pool."""
    if settings.tracing.enabled:
        tracing.enable()
    app = web.Application(middlewares=[count_requests, storage_unavailable])
    app[keys.SIGNER] = tokens.Signer(settings.tokens, bind=tokens.binds_requester(settings))
    tokens.warn_unusable_links(settings, identity_callable=identity is not None)
    app[keys.IDENTITY] = identity or identity_mod.header_identity(settings.web.identity_header)
    app[keys.CHUNK_SIZE] = settings.web.chunk_size
    app[keys.DOWNLOAD_MODE] = settings.download_mode()
    accel = settings.web.download_mode == "accel"
    app[keys.ACCEL_PREFIX] = settings.web.accel_prefix if accel else None
    app[keys.PUBLIC_URL] = settings.web.public_url
    app[keys.TEMPLATE_DIR] = settings.template_dir
    app[keys.WEB_SETTINGS] = settings.web

    async def database(app: web.Application) -> AsyncIterator[None]:
        if db is not None:
            app[keys.STORE] = db
            yield
            return
        pool = await store.create_pool(
            settings.database_url.get_secret_value(), pooler=settings.database_pooler
        )
        app[keys.STORE] = store.Store(pool)
        yield
        await pool.close()

    async def files(app: web.Application) -> AsyncIterator[None]:
        async with storage.opened(settings) as opened:
            app[keys.STORAGE] = opened
            yield

    app.cleanup_ctx.append(database)
    app.cleanup_ctx.append(files)
    app.router.add_get("/download/{token}", downloads.download)  # GET also answers HEAD
    app.router.add_get("/status/{token}", downloads.status)
    my_files.mount(app)  # the requester's page of their files, and POST /my-files
    bundles.mount(app)  # /bundle/{token}, /bundle/{token}/zip
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_view)
    unsubscribe.mount(app)  # a schedule's one-click unsubscribe (RFC 8058)
    if settings.web.admin_password is not None:
        from bgworker.web import admin

        app.add_subapp("/admin/", admin.create_admin(settings))
    if settings.web.api_keys:
        # POST /requests, and with it the server's only RabbitMQ connection.
        from bgworker.web import erasures, front_door, front_door_schedules

        front_door.mount(app, settings)
        front_door_schedules.mount(app)  # POST /schedules, behind the same keys
        erasures.mount(app, settings)  # POST /erasures: `bgworker forget` over HTTP
    return app


async def serve(
    settings: settings_mod.Settings, stop: asyncio.Event, *, parent: int | None = None
) -> None:
    """Serve until ``stop`` is set, then drain: ``runner.cleanup`` closes the listening
    socket and waits (up to aiohttp's 60 s shutdown timeout) for requests in flight.
    ``parent``: the supervisor's pid, for one of ``serve --workers N``'s processes (it binds
    with SO_REUSEPORT and stops when the parent is gone)."""
    app = create_app(settings)
    runner = access_log.Runner(app)
    await runner.setup()
    reuse_port = True if parent is not None else None
    site = web.TCPSite(runner, settings.web.host, settings.web.port, reuse_port=reuse_port)
    await site.start()
    log.info(
        "serving on http://%s:%d (links: %s)",
        settings.web.host,
        settings.web.port,
        settings.web.public_url,
    )
    watcher = None
    if parent is not None:  # a child of `serve --workers N`: never outlive the parent
        watch = supervisor.watch_parent(parent, stop)
        watcher = asyncio.create_task(watch, name="serve-watch-parent")
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
        await runner.cleanup()
