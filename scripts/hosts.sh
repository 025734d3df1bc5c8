#!/usr/bin/env bash
# Multi-host tooling (tests/hosts, docs/hosts.md) from a shell: list, down [--all-stale], up N.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m tests.hosts "$@"
