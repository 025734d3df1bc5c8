"""The ``bgworker`` command line's arguments: one parser, every subcommand and flag, and
the settings each flag overrides (named in ``--help``, with the environment's defaults)."""

from __future__ import annotations

import argparse
import ast
import uuid

from bgworker import links
from bgworker import settings as settings_mod
from bgworker.deadletters import cli as dlq_cli


def _env(name: str) -> str:
    return f"(env {settings_mod.ENV_PREFIX}{name})"


def _shown(default: str) -> str:
    """A list default as the environment writes it (``5.0,30.0``), not as a Python repr."""
    if default.startswith("[") and default.endswith("]"):
        return ",".join(str(item) for item in ast.literal_eval(default))
    return default


def parser() -> argparse.ArgumentParser:
    env_table = "\n".join(
        f"  {name}={_shown(default)}" for name, default in settings_mod.env_names()
    )
    p = argparse.ArgumentParser(
        prog="bgworker",
        description="Build files in the background and hand them out over signed links.",
        epilog="settings (environment variables and defaults):\n" + env_table,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", help="consume requests and build files")
    w.add_argument("--concurrency", type=int, help="jobs at once " + _env("WORKER__CONCURRENCY"))
    w.add_argument("--max-jobs", type=int, help="exit after this many jobs (batch mode)")
    w.add_argument("--max-seconds", type=float, help="exit after this many seconds (batch mode)")
    w.add_argument("--burst", action="store_true", help="exit when the work queue is empty")
    w.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics on this port " + _env("METRICS__PORT"),
    )

    s = sub.add_parser("serve", help="serve downloads and status over HTTP")
    s.add_argument("--host", help=_env("WEB__HOST"))
    s.add_argument("--port", type=int, help=_env("WEB__PORT"))
    s.add_argument("--workers", type=int, help="processes sharing the port " + _env("WEB__WORKERS"))
    s.add_argument("--parent", type=int, help=argparse.SUPPRESS)  # web/supervisor.py's child

    sub.add_parser("migrate", help="create the database if needed and apply migrations")

    pub = sub.add_parser("publish", help="publish a FileRequested event")
    pub.add_argument("file_type")
    pub.add_argument("--criteria", default="{}", help="JSON object")
    pub.add_argument("--filename", help="default: <file_type>.<extension> the handler declares")
    pub.add_argument("--content-type", help="default: the content type the handler declares")
    pub.add_argument("--description", default="")
    pub.add_argument("--email", help="requester email (gets the link)")
    pub.add_argument("--requester-id", help="binds the link to this user")
    pub.add_argument("--language", default="en")
    pub.add_argument("--timezone", default="UTC")
    pub.add_argument("--lifetime", type=int, help="seconds the file stays downloadable")
    pub.add_argument("--id", help="request id (default: a new UUID)")

    c = sub.add_parser("cancel", help="cancel a queued or running request")
    c.add_argument("id", type=uuid.UUID)
    st = sub.add_parser("status", help="show a request's row and attempts")
    st.add_argument("id", type=uuid.UUID)

    cl = sub.add_parser("clean", help="delete expired and orphaned files")
    cl.add_argument(
        "--leeway",
        type=float,
        default=3600,
        help="keep files this many seconds past expiry (default 3600)",
    )
    cl.add_argument(
        "--orphan-age",
        type=float,
        default=86400,
        help="delete unreferenced files older than this (default 86400 s)",
    )
    cl.add_argument("--timeout", type=float, help="stop after this many seconds")
    cl.add_argument("--sleep", type=float, default=0.0, help="pause between deletions (s)")
    cl.add_argument("--dry-run", action="store_true", help="count, delete nothing")

    sc = sub.add_parser("schemas", help="JSON Schemas of the events and the AsyncAPI document")
    sc.add_argument("action", choices=["export"])
    sc.add_argument("--dir", default="schemas")
    sc.add_argument("--check", action="store_true", help="fail if the files are out of date")

    dlq_cli.add_parser(sub)
    links.add_parsers(sub)

    d = sub.add_parser("demo", help="run the whole pipeline once on this machine")
    d.add_argument("--rows", type=int, default=20000)
    return p
