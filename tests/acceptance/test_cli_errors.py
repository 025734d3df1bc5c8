"""Every configuration mistake and unreachable or misaddressed service, through the real
command: one line on stderr naming the setting or service, exit 64 or 69, no traceback."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from bgworker import settings as settings_mod
from tests.acceptance.processes import run_cli
from tests.helpers import AMQP_URL, PG_ADMIN, db_url, settings_env

USAGE = 64  # EX_USAGE: the settings are wrong
UNAVAILABLE = 69  # EX_UNAVAILABLE: the service does not answer


@dataclass(frozen=True)
class Mistake:
    name: str
    env: dict[str, str]
    command: tuple[str, ...]
    code: int
    says: tuple[str, ...]  # substrings of the one stderr line


ANY_ID = "00000000-0000-4000-8000-000000000000"
VHOST_URL = AMQP_URL.rstrip("/") + "/no-such-vhost-" + uuid.uuid4().hex[:6]
WRONG_PASSWORD_URL = AMQP_URL.replace("guest:guest@", "guest:wrong-password@")

MISTAKES = [
    Mistake(
        "a handler lifespan whose service is away",
        {"BGWORKER_HANDLERS": "tests.failing_lifespans:refused"},
        ("worker", "--burst"),
        UNAVAILABLE,
        ("lifespan failed to open", "ConnectionRefusedError", "BGWORKER_HANDLERS"),
    ),
    Mistake(
        "a handler lifespan that is misconfigured",
        {"BGWORKER_HANDLERS": "tests.failing_lifespans:misconfigured"},
        ("worker", "--burst"),
        USAGE,
        ("lifespan failed to open", "REPORTS_API_TOKEN is not set"),
    ),
    Mistake(
        "missing secret keys",
        {"BGWORKER_TOKENS__SECRET_KEYS": ""},
        ("worker", "--burst"),
        USAGE,
        ("BGWORKER_TOKENS__SECRET_KEYS is not set", "token_urlsafe"),
    ),
    Mistake(
        "missing secret keys (server)",
        {"BGWORKER_TOKENS__SECRET_KEYS": ""},
        ("serve",),
        USAGE,
        ("BGWORKER_TOKENS__SECRET_KEYS is not set",),
    ),
    Mistake(
        "handler module that does not exist",
        {"BGWORKER_HANDLERS": "myapp_nowhere.files:registry"},
        ("worker", "--burst"),
        USAGE,
        ("BGWORKER_HANDLERS", "no module named 'myapp_nowhere.files'"),
    ),
    Mistake(
        "handler attribute that is not there",
        {"BGWORKER_HANDLERS": "bgworker.examples:regsitry"},
        ("worker", "--burst"),
        USAGE,
        ("BGWORKER_HANDLERS", "has no attribute 'regsitry'"),
    ),
    Mistake(
        "handler attribute that is not a registry",
        {"BGWORKER_HANDLERS": "bgworker.examples:login_events"},
        ("worker", "--burst"),
        USAGE,
        ("BGWORKER_HANDLERS", "is a module, not a bgworker.handlers.Registry"),
    ),
    Mistake(
        "bad log level",
        {"BGWORKER_LOG_LEVEL": "LOUD"},
        ("status", ANY_ID),
        USAGE,
        ("BGWORKER_LOG_LEVEL='LOUD' is not a logging level",),
    ),
    Mistake(
        "setting of the wrong type",
        {"BGWORKER_WORKER__CONCURRENCY": "many"},
        ("status", ANY_ID),
        USAGE,
        ("BGWORKER_WORKER__CONCURRENCY",),
    ),
    Mistake(
        "wrong RabbitMQ vhost",
        {"BGWORKER_AMQP_URL": VHOST_URL},
        ("publish", "login_events"),
        USAGE,
        ("BGWORKER_AMQP_URL", "refused virtual host 'no-such-vhost-"),
    ),
    Mistake(
        "wrong RabbitMQ vhost (dead-letter tools)",
        {"BGWORKER_AMQP_URL": VHOST_URL},
        ("dlq", "stats"),
        USAGE,
        ("BGWORKER_AMQP_URL", "refused virtual host 'no-such-vhost-"),
    ),
    Mistake(
        "wrong RabbitMQ password",
        {"BGWORKER_AMQP_URL": WRONG_PASSWORD_URL},
        ("publish", "login_events"),
        USAGE,
        ("BGWORKER_AMQP_URL", "refused the login of 'guest'"),
    ),
    Mistake(
        "unreachable RabbitMQ",
        {"BGWORKER_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/"},
        ("publish", "login_events"),
        UNAVAILABLE,
        ("cannot reach RabbitMQ at 127.0.0.1:1", "BGWORKER_AMQP_URL"),
    ),
    Mistake(
        "an empty entry in a list of RabbitMQ nodes",
        {"BGWORKER_AMQP_URL": f"{WRONG_PASSWORD_URL},  ,{AMQP_URL}"},
        ("worker", "--burst"),
        USAGE,
        ("BGWORKER_AMQP_URL: entry 2 of 3 is empty",),
    ),
    Mistake(
        "a list of RabbitMQ nodes with a malformed entry",
        {"BGWORKER_AMQP_URL": f"{AMQP_URL},http://guest:wrong-password@mq2:5672/"},
        ("publish", "login_events"),
        USAGE,
        ("BGWORKER_AMQP_URL: entry 2 of 2 must start with amqp:// or amqps://",),
    ),
    Mistake(
        "a list of RabbitMQ nodes none of which answers",
        {"BGWORKER_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/,amqp://guest:guest@127.0.0.1:2/"},
        ("publish", "login_events"),
        UNAVAILABLE,
        ("cannot reach RabbitMQ at 127.0.0.1:1,127.0.0.1:2", "BGWORKER_AMQP_URL"),
    ),
    Mistake(
        "invalid DSN",
        {"BGWORKER_DATABASE_URL": "postgres-on-the-box"},
        ("status", ANY_ID),
        USAGE,
        ("BGWORKER_DATABASE_URL must start with postgresql://",),
    ),
    Mistake(
        "DSN with an impossible port",
        {"BGWORKER_DATABASE_URL": "postgresql://postgres@127.0.0.1:99999/x"},
        ("status", ANY_ID),
        USAGE,
        ("BGWORKER_DATABASE_URL is not a valid URL",),
    ),
    Mistake(
        "wrong PostgreSQL user",
        {"BGWORKER_DATABASE_URL": "postgresql://no_such_role@127.0.0.1:5432/postgres"},
        ("status", ANY_ID),
        USAGE,
        ("BGWORKER_DATABASE_URL", "refused the login", "no_such_role"),
    ),
    Mistake(
        "database that does not exist",
        {"BGWORKER_DATABASE_URL": db_url("bgw_never_" + uuid.uuid4().hex[:8])},
        ("worker", "--burst"),
        USAGE,
        ("BGWORKER_DATABASE_URL", "has no database 'bgw_never_", "bgworker migrate"),
    ),
    Mistake(
        "unreachable PostgreSQL",
        {"BGWORKER_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/bgworker"},
        ("cancel", ANY_ID),
        UNAVAILABLE,
        ("cannot reach PostgreSQL at 127.0.0.1:1", "BGWORKER_DATABASE_URL"),
    ),
]


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.name for m in MISTAKES])
async def test_one_line_naming_the_setting_and_a_sysexits_code(
    settings: settings_mod.Settings, mistake: Mistake
) -> None:
    env = {**settings_env(settings), **mistake.env}
    result = await run_cli(*mistake.command, env=env, timeout=60)
    assert result.code == mistake.code, result.err
    assert "Traceback" not in result.err
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    [line] = lines
    assert line.startswith(f"bgworker {mistake.command[0]}: "), line
    for part in mistake.says:
        assert part in line, line
    assert "wrong-password" not in result.err  # a URL's password is never said
    assert result.out == ""


async def test_a_server_that_answers_with_an_error_is_named_by_its_sqlstate(
    settings: settings_mod.Settings,
) -> None:
    """PostgreSQL at the address, answering the login with an error that is neither a wrong
    password nor a missing database (here 53300, too many connections: a role allowed none):
    the line says what the server said and its SQLSTATE, not that it refused the
    connection."""
    role = "bgw_nolimit_" + uuid.uuid4().hex[:8]
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
        parts = urlsplit(PG_ADMIN)
        url = urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rsplit('@', 1)[-1]}"))
        env = {**settings_env(settings), "BGWORKER_DATABASE_URL": url}
        result = await run_cli("status", ANY_ID, env=env, timeout=60)
    finally:
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()
    assert result.code == UNAVAILABLE, result.err
    [line] = result.err.splitlines()
    assert line.startswith("bgworker status: PostgreSQL at "), line
    assert "is out of resources (53300: too many connections" in line, line
    assert "BGWORKER_DATABASE_POOLER" in line, line
    assert "refused the connection" not in line
