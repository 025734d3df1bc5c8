# One task runner for people and CI. `make demo` and `make test` set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Quiets the notice Material for MkDocs prints on every build (its end of life, May 2027).
export NO_MKDOCS_2_WARNING := 1

.PHONY: install demo test test-deps test-faults fuzz lint typecheck schemas schema-sql docs docs-serve bench bench-quick services node

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,tracing]'
	touch $(STAMP)

install: $(STAMP)

# Make sure RabbitMQ and PostgreSQL run on this machine (no-op when they already do).
services:
	@bash scripts/services.sh

demo: $(STAMP) services
	$(BIN)/bgworker demo

# The Node.js folders: the AsyncAPI parser the schema test runs, and the Node producer
# example (npm ci from their lock files). Without node and npm, or with
# BGWORKER_TEST_INSTALL=no, their tests skip.
NODE_DIRS := scripts/asyncapi docs/examples/node-producer

# Reinstalled only when a lock file is newer than what npm ci last installed.
NODE_STAMPS := $(addsuffix /node_modules/.package-lock.json,$(NODE_DIRS))

node: $(NODE_STAMPS)

%/node_modules/.package-lock.json: %/package-lock.json
	@if [ "$${BGWORKER_TEST_INSTALL:-yes}" = no ]; then \
		echo "node: BGWORKER_TEST_INSTALL=no: not running npm ci in $*; its tests skip"; \
	elif command -v npm >/dev/null; then \
		npm ci --prefix $* --no-audit --no-fund --loglevel=error; \
	else echo "node: npm is not installed; the Node.js tests in $* will skip"; fi

# System packages the tests run for real (nginx for the offload tests, node and npm for the
# AsyncAPI parser and the Node producer); only what is missing, only as root, never with
# BGWORKER_TEST_INSTALL=no.
test-deps:
	@bash scripts/test_deps.sh

# The main suite: everything except the tests that restart the shared services, in two
# pytest-xdist processes (each test isolates itself: its own database, queues, bucket).
test: $(STAMP) services test-deps node
	$(BIN)/ruff check bgworker tests bench scripts
	$(BIN)/ruff format --check bgworker tests bench scripts
	$(BIN)/mypy bgworker tests
	$(BIN)/bgworker schemas export --check
	$(BIN)/python scripts/schema_sql.py --check
	$(BIN)/lint-imports --no-logo --no-cache
	$(BIN)/mkdocs build --strict --quiet
	$(BIN)/pytest -m "not faults" -n 2

# The property tests (hypothesis) searching at random: FUZZ_FACTOR (tests/helpers.py) times
# their examples, from a seed printed first and in the header; `make fuzz SEED=N` replays a
# run. `make test` never searches at random (profile "ci", tests/conftest.py).
fuzz: $(STAMP)
	@seed="$(SEED)"; seed="$${seed:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"; \
	echo "fuzz: seed $$seed (replay: make fuzz SEED=$$seed)"; \
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest -m "hypothesis and not faults" -n 2 --timeout=0 \
		--hypothesis-seed="$$seed" || { echo "fuzz: failed with seed $$seed"; exit 1; }

# Restarts RabbitMQ and PostgreSQL mid-run: run alone, never next to another test run. The
# multi-host tests in it (tests/multihost, docs/hosts.md) need nftables from test-deps.
test-faults: $(STAMP) services test-deps
	$(BIN)/pytest -m faults

lint:
	$(BIN)/ruff check bgworker tests bench scripts
	$(BIN)/ruff format --check bgworker tests bench scripts
	$(BIN)/lint-imports --no-logo --no-cache

typecheck:
	$(BIN)/mypy bgworker tests

schemas: $(STAMP)
	$(BIN)/bgworker schemas export

# The documentation site (mkdocs.yml, pages in docs/) into site/, git-ignored. --strict: a
# broken link or anchor, or a page left out of the nav, fails the build (as in `make test`).
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

# The site on http://127.0.0.1:8000, rebuilt as the pages change.
docs-serve: $(STAMP)
	$(BIN)/mkdocs serve --strict

# bgworker/store/migrations/schema.sql: today's schema, from the migrations (needs PostgreSQL, pg_dump).
schema-sql: $(STAMP) services
	$(BIN)/python scripts/schema_sql.py

# Benchmarks (BENCHMARKS.md): not part of `make test`. Needs nginx and wrk from Debian
# (apt-get install nginx-light wrk); Celery and the profiler come with the `bench` extra.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) services
	$(BIN)/python -m bench run

# Every benchmark briefly (a smoke run; no timing is asserted anywhere). Its scale-out part
# (workers on 1 and 2 namespace hosts, about 45 s) needs root: without it, it says why and skips.
bench-quick: $(BENCH_STAMP) services
	$(BIN)/python -m bench run --quick
