"""The command line's parser: `--help` loads nothing heavy, lists every setting without
showing a secret, and documents every argument."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import pytest

from bgworker.cli import arguments
from tests.helpers import REPO

# What a command imports once it runs, never before its arguments are parsed: the clients
# of the services, the web server, the metrics, the event loop, the settings' models and
# the progress bar.
HEAVY = (
    "aio_pika",
    "aiormq",
    "aiohttp",
    "asyncpg",
    "prometheus_client",
    "uvloop",
    "botocore",
    "aiobotocore",
    "pydantic",
    "pydantic_settings",
    "rich",
    "jinja2",
)


def _imported(*argv: str, env: dict[str, str] | None = None) -> tuple[set[str], str]:
    """The modules `python -X importtime -m bgworker ARGV` loaded, and what it printed."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "bgworker", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )
    modules = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", done.stderr, re.M))
    assert "bgworker.cli.arguments" in modules, done.stderr[-2000:]
    return modules, done.stdout


def _subcommands() -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found.append((*path, name))
                    walk(child, (*path, name))

    walk(arguments.parser(), ())
    return found


@pytest.mark.parametrize(
    "argv",
    [
        ("--help",),
        ("status", "--help"),
        ("publish", "--help"),
        ("dlq", "purge", "--help"),
        ("status", "not-a-uuid"),  # refused by the parser: exits 2 before any import
        ("no-such-command",),
    ],
)
def test_parsing_imports_no_heavy_module(argv: tuple[str, ...]) -> None:
    modules, _ = _imported(*argv)
    heavy = sorted({m.split(".")[0] for m in modules} & set(HEAVY))
    assert heavy == [], f"bgworker {' '.join(argv)} imported {heavy}"


def test_every_subcommand_and_argument_has_help() -> None:
    """Every positional argument and flag says what it is (`id` had no text)."""
    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, child in action.choices.items():
                    if not helps.get(name):
                        missing.append(f"{path} {name}")
                    walk(child, f"{path} {name}")
            elif action.help is None:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(arguments.parser(), "bgworker")
    assert missing == []
    assert len(_subcommands()) > 15


def test_help_shows_defaults_unset_and_set_never_a_secret() -> None:
    secret_key, password = "k-" + "s3cr3t" * 4, "pw-" + "hunter2" * 3
    env = {k: v for k, v in os.environ.items() if not k.startswith("BGWORKER_")}
    env |= {
        "BGWORKER_TOKENS__SECRET_KEYS": secret_key,
        "BGWORKER_AMQP_URL": f"amqp://user:{password}@rabbit.internal:5672/",
        "BGWORKER_NAMESPACE": "not-shown",  # the help gives defaults, not the environment
    }
    _, out = _imported("--help", env=env)
    shown = dict(re.findall(r"^  (BGWORKER_\w+)=(.*)$", out, re.M))
    assert list(shown) == [name for name, _, _ in arguments.SETTINGS]
    assert shown["BGWORKER_TOKENS__SECRET_KEYS"] == "(set)"
    assert shown["BGWORKER_AMQP_URL"] == "(set)"
    assert shown["BGWORKER_WEB__ADMIN_PASSWORD"] == "(unset)"  # a secret nobody set
    assert shown["BGWORKER_DATABASE_URL"] == "postgresql://postgres@127.0.0.1:5432/bgworker"
    assert shown["BGWORKER_TEMPLATE_DIR"] == "(unset)"  # was "None"
    assert shown["BGWORKER_NAMESPACE"] == "bgworker"
    assert shown["BGWORKER_WORKER__RETRY_DELAYS_SECONDS"] == "5.0,30.0,300.0"
    for value in shown.values():
        assert value not in ("", "None", "(secret)", "[]"), shown
    assert secret_key not in out and password not in out and "rabbit.internal" not in out
