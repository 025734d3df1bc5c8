"""Why a command cannot start, as one line an operator can act on.

Every mistake in the settings, and every service that cannot be reached or refuses what the
settings say, ends the command with one line on stderr that names the setting or the service
and what to do, and a sysexits(3) status: 64 (``EX_USAGE``) when the settings are wrong (a
missing key, a handler path that imports nothing, a URL that names a vhost, database or user
the service does not know), 69 (``EX_UNAVAILABLE``) when a service does not answer (retrying
later may help). Never a traceback: a traceback says "bug in bgworker", and these are not.

The services a command needs are probed once before it runs (one connection each, closed at
once), so the line can say which service failed even when the error type cannot (an
``OSError`` from either client). ``worker`` and ``serve`` first wait out a service that
refuses, resets or times out, for ``BGWORKER_STARTUP_RETRY_SECONDS`` (``faults.ride_out``).
"""

from __future__ import annotations

import importlib
import logging
import socket
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, urlsplit

import aiormq
import asyncpg
import pydantic

from bgworker import faults, handlers, storage, store
from bgworker import settings as settings_mod
from bgworker.messaging import failover
from bgworker.observe import logs

EXIT_USAGE: Final = 64  # EX_USAGE: the settings are wrong
EXIT_UNAVAILABLE: Final = 69  # EX_UNAVAILABLE: a service we need does not answer

AMQP_URL: Final = f"{settings_mod.ENV_PREFIX}AMQP_URL"
DATABASE_URL: Final = f"{settings_mod.ENV_PREFIX}DATABASE_URL"
DATABASE_POOLER: Final = f"{settings_mod.ENV_PREFIX}DATABASE_POOLER"
HANDLERS: Final = f"{settings_mod.ENV_PREFIX}HANDLERS"
LOG_LEVEL: Final = f"{settings_mod.ENV_PREFIX}LOG_LEVEL"
SECRET_KEYS: Final = f"{settings_mod.ENV_PREFIX}TOKENS__SECRET_KEYS"
PROBE_TIMEOUT_SECONDS: Final = 10.0

# What each command needs before it can do anything (others probe nothing). `migrate` is
# absent: it creates a missing database, so it maps its errors afterwards instead.
NEEDS_KEYS: Final = frozenset({"worker", "serve"})
NEEDS_DATABASE: Final = frozenset({"worker", "serve", "status", "cancel", "clean", "forget"})
NEEDS_BROKER: Final = frozenset({"worker", "publish", "dlq", "forget", "relay"})
NEEDS_HANDLERS: Final = frozenset({"worker"})
NEEDS_STORAGE: Final = frozenset({"worker", "serve", "clean", "forget"})
# Started by a supervisor, often next to the services: they wait out a service that is not
# up yet (BGWORKER_STARTUP_RETRY_SECONDS). A one-shot command answers at once.
RIDES_OUT: Final = frozenset({"worker", "serve"})


@dataclass
class StartupError(Exception):
    """One line for stderr and the exit status that goes with it."""

    line: str
    code: int

    def __str__(self) -> str:
        return self.line


def config(line: str) -> StartupError:
    return StartupError(line, EXIT_USAGE)


def unavailable(line: str) -> StartupError:
    return StartupError(line, EXIT_UNAVAILABLE)


# -- settings ---------------------------------------------------------------------------


def env_name(loc: tuple[int | str, ...]) -> str:
    """The environment variable of a pydantic error location: ('web', 'port') ->
    BGWORKER_WEB__PORT."""
    return settings_mod.ENV_PREFIX + "__".join(str(part).upper() for part in loc if part != "")


def settings_error(exc: pydantic.ValidationError) -> StartupError:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = tuple(p for p in err["loc"] if isinstance(p, str))  # drop list indexes
        parts.append(f"{env_name(loc)}: {err['msg']}")
    return config("bad settings: " + "; ".join(parts) + " (fix the environment variable)")


def check_settings(settings: settings_mod.Settings, command: str) -> None:
    """The settings a command depends on, checked before anything connects."""
    level = logging.getLevelName(settings.log_level.upper())
    if not isinstance(level, int):
        raise config(
            f"{LOG_LEVEL}={settings.log_level!r} is not a logging level: "
            "use DEBUG, INFO, WARNING, ERROR or CRITICAL"
        )
    if command not in ("schemas", "smtp-sink"):  # the commands that use no service
        dsn = settings.database_url.get_secret_value()
        _check_url(DATABASE_URL, dsn, ("postgresql", "postgres"))
        try:  # one URL, or several nodes' comma-separated (messaging.failover)
            failover.parse_urls(settings.amqp_url.get_secret_value())
        except ValueError as exc:
            raise config(f"{AMQP_URL}: {exc}") from None
    if command in NEEDS_KEYS and not any(k.get_secret_value() for k in settings.tokens.secret_keys):
        raise config(
            f"{SECRET_KEYS} is not set: download links are signed with it; set it to a "
            "random value, e.g. from `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    if command in NEEDS_HANDLERS:
        load_handlers(settings.handlers)
    if command == "serve" and settings.web.workers > 1 and settings.web.port == 0:
        # Each process would bind its own random port: they must share one.
        raise config(f"serve --workers {settings.web.workers} needs a fixed port, not 0")


def _check_url(name: str, url: str, schemes: tuple[str, ...]) -> None:
    # Parsed here, because the clients report a malformed URL as an unreachable host (a
    # port of 99999 is an OverflowError inside socket.connect) or not at all.
    expected = " or ".join(f"{s}://" for s in schemes)
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when not a number in 0-65535
    except ValueError as exc:
        raise config(
            f"{name} is not a valid URL ({exc}): expected {expected}HOST[:PORT]/..."
        ) from None
    if parts.scheme not in schemes or not parts.hostname:
        raise config(
            f"{name} must start with {expected} and name a host "
            f"(it has scheme {parts.scheme!r} and host {parts.hostname or ''!r})"
        )
    if port == 0:
        raise config(f"{name}: port 0 is not a port")


def load_handlers(paths: list[str]) -> handlers.Registry:
    """``handlers.load`` after checking each ``module:attribute`` names a registry, so a
    typo is reported as what it is rather than as an ImportError or a TypeError."""
    if not paths:
        raise config(f"{HANDLERS} is empty: name at least one registry, `module:attribute`")
    for path in paths:
        module_name, _, attr = path.partition(":")
        attr = attr or "registry"
        if not module_name:
            raise config(f"{HANDLERS}: {path!r} names no module; write `module:attribute`")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
                raise config(
                    f"{HANDLERS}: no module named {module_name!r} (in {path!r}): check the "
                    "spelling and that it is installed in this environment"
                ) from None
            raise config(
                f"{HANDLERS}: importing {module_name!r} failed: {exc} (a dependency of the "
                "handler module is missing)"
            ) from None
        except Exception as exc:
            raise config(
                f"{HANDLERS}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
            ) from None
        if not hasattr(module, attr):
            raise config(
                f"{HANDLERS}: module {module_name!r} has no attribute {attr!r} (in {path!r}): "
                "name the Registry object, `module:attribute`"
            )
        found = getattr(module, attr)
        if not isinstance(found, handlers.Registry):
            raise config(
                f"{HANDLERS}: {path!r} is a {type(found).__name__}, not a "
                "bgworker.handlers.Registry"
            )
    return handlers.load(paths)


# -- services ---------------------------------------------------------------------------


async def probe(settings: settings_mod.Settings, command: str) -> None:
    """Connect once to each service ``command`` needs and close again; raise a
    StartupError naming the one that failed. The long-running commands (``RIDES_OUT``)
    first wait out a service that is restarting or not up yet (``faults.ride_out``)."""
    seconds = settings.startup_retry_seconds if command in RIDES_OUT else 0.0
    if command in NEEDS_DATABASE:
        dsn = settings.database_url.get_secret_value()

        async def connect_database() -> None:
            conn = await asyncpg.connect(dsn, timeout=PROBE_TIMEOUT_SECONDS)
            await conn.close()

        try:
            await faults.ride_out(connect_database, service=_service(dsn), seconds=seconds)
            pooled = settings.database_pooler == "none" and await store.transaction_pooled(
                dsn, timeout=PROBE_TIMEOUT_SECONDS
            )
        except Exception as exc:
            raise database_error(exc, dsn) from None
        if pooled:
            # asyncpg's cached named statements would be missing on the next transaction's
            # server connection: every query could fail, and requests with them.
            raise config(
                f"{DATABASE_URL}: {_service(dsn)} is a pooler in transaction mode (the "
                "server process changed between two statements of one connection): set "
                f"{DATABASE_POOLER}=transaction, or use session mode"
            )
    if command in NEEDS_BROKER:
        url = settings.amqp_url.get_secret_value()

        async def connect_broker() -> None:
            connection = await failover.connect_plain(url, timeout=PROBE_TIMEOUT_SECONDS)
            await connection.close()

        # aiormq logs a failed connect at ERROR before raising: the line below says it once.
        client_log = logging.getLogger("aiormq")
        level = client_log.level
        client_log.setLevel(logging.CRITICAL)
        try:
            await faults.ride_out(connect_broker, service=_service(url), seconds=seconds)
        except Exception as exc:
            raise broker_error(exc, url) from None
        finally:
            client_log.setLevel(level)
    if command in NEEDS_STORAGE and settings.storage.backend == "s3":

        async def open_storage() -> None:
            async with storage.opened(settings):  # S3: looks the bucket up
                pass

        try:
            where = settings.storage.s3_endpoint_url or "S3"
            await faults.ride_out(open_storage, service=f"storage at {where}", seconds=seconds)
        except storage.StorageUnavailableError as exc:
            raise unavailable(str(exc)) from None
        except storage.StorageError as exc:  # it answered: no such bucket, access denied
            raise config(str(exc)) from None


def service_error(exc: BaseException, settings: settings_mod.Settings) -> StartupError:
    """An error from either client, told apart by type (aiormq's are all AMQPError)."""
    if isinstance(exc, aiormq.exceptions.AMQPError):
        return broker_error(exc, settings.amqp_url.get_secret_value())
    database_side = (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        ConnectionError,  # refused, reset
        socket.gaierror,  # no such host
        TimeoutError,
    )
    if isinstance(exc, database_side):
        return database_error(exc, settings.database_url.get_secret_value())
    # Another OSError (a full disk, a socket error of unknown origin): say it as it is
    # rather than blame a service.
    return unavailable(_reason(exc))


def _where(url: str) -> str:
    if url.startswith("amqp"):  # one node, or several (messaging.failover)
        return logs.address(url)
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or ''}".rstrip(":")


def _service(url: str) -> str:
    name = "RabbitMQ" if url.startswith("amqp") else "PostgreSQL"
    return f"{name} at {_where(url)}"


def database_error(exc: BaseException, dsn: str) -> StartupError:
    where = f"PostgreSQL at {_where(dsn)}"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        name = unquote(urlsplit(dsn).path.lstrip("/"))
        return config(
            f"{DATABASE_URL}: {where} has no database {name!r}: run `bgworker migrate` "
            "(it creates it) or fix the name"
        )
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return config(
            f"{DATABASE_URL}: {where} refused the login ({exc}): fix the user or password"
        )
    if isinstance(exc, asyncpg.ClientConfigurationError | ValueError):
        return config(f"{DATABASE_URL} is not a usable PostgreSQL URL: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        return _database_answer(exc, where)
    return unavailable(
        f"cannot reach {where} ({_reason(exc)}): start it (`make services`) or fix "
        f"the host and port in {DATABASE_URL}"
    )


def _database_answer(exc: asyncpg.PostgresError, where: str) -> StartupError:
    """The server answered, with an error: say which (its SQLSTATE), not "refused"."""
    state = exc.sqlstate or ""
    if state == "57P03":  # cannot_connect_now: starting up, shutting down, recovering
        return unavailable(f"{where} is not accepting connections yet ({exc}): try again")
    if state.startswith("53"):  # insufficient resources: too_many_connections, disk_full...
        return unavailable(
            f"{where} is out of resources ({state}: {exc}): lower the pool sizes, add a "
            "pooler (BGWORKER_DATABASE_POOLER) or raise the server's limits"
        )
    if state == "42501":  # insufficient_privilege
        return config(f"{DATABASE_URL}: the user has no permission: {exc}")
    return unavailable(f"{where} answered with an error ({state or 'no SQLSTATE'}): {exc}")


def broker_error(exc: BaseException, url: str) -> StartupError:
    # A cluster's nodes share users and vhosts: the first URL of a list names them.
    parts = urlsplit(url.split(",")[0].strip())
    where = f"RabbitMQ at {_where(url)}"
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    user = unquote(parts.username or "guest")
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        return config(
            f"{AMQP_URL}: {where} refused the login of {user!r}: fix the user or password"
        )
    if isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.OpenOk" in str(exc):
        # The broker answers connection.open with connection.close (530 NOT_ALLOWED) when
        # the vhost does not exist or the user may not use it (AMQP 0-9-1 section 1.4.2.7);
        # aiormq reports that as an unexpected frame and drops the reply text.
        return config(
            f"{AMQP_URL}: {where} refused virtual host {vhost!r} (it does not exist, or "
            f"{user!r} has no permission on it): fix the URL's path (`/` is the default "
            "vhost, written %2F) or `rabbitmqctl add_vhost` / `set_permissions`"
        )
    if isinstance(exc, aiormq.exceptions.AMQPError) and not isinstance(exc, OSError):
        return config(f"{AMQP_URL}: {where} refused the connection: {exc}")
    return unavailable(
        f"cannot reach {where} ({_reason(exc)}): start it (`make services`) or fix "
        f"the host and port in {AMQP_URL}"
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer"
    return str(exc) or type(exc).__name__
