# The two commands: `make run` (serve Arbiter, simulated cluster by default) and
# `make test` (the whole suite). Both set up .venv from the lock file first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml 2>/dev/null | cksum | cut -d' ' -f1)
CHROMIUM ?= /usr/bin/chromium
export ARBITER_PORT ?= 8000
# Tests keep their state (test database, huey queue) apart from a running `make run`.
TEST_ENV := ARBITER_DATA_DIR=$(CURDIR)/var/test

.PHONY: install run test lint unit e2e test-postgres bench lock clean startos-check startos-check-if-node

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py serve --port $(ARBITER_PORT)

test: install lint startos-check-if-node unit e2e

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python manage.py check --fail-level WARNING
	$(BIN)/python manage.py makemigrations --check --dry-run

# With coverage of the test process (pyproject's [tool.coverage]); the report follows.
unit: install
	$(TEST_ENV) $(BIN)/python -m coverage run -m pytest
	$(BIN)/python -m coverage report

# Browser tests run in their own pytest process (Playwright's sync API leaves an event
# loop behind that breaks later async tests). In CI a missing browser is a failure.
e2e: install
	@if [ -x "$(CHROMIUM)" ]; then \
		$(TEST_ENV) $(BIN)/python -m pytest -m e2e tests/e2e; \
	elif [ -n "$$CI" ]; then \
		echo "ERROR: $(CHROMIUM) not found; CI must install Debian chromium" >&2; exit 1; \
	else \
		echo "*** BROWSER TESTS NOT RUN: $(CHROMIUM) is missing (apt-get install chromium) ***" >&2; \
	fi

# The suite again as production runs: PostgreSQL and Redis (CI does this; needs both).
test-postgres: install
	$(TEST_ENV) DATABASE_URL=$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test} \
		REDIS_URL=$${REDIS_URL:-redis://127.0.0.1:6379/0} $(BIN)/python -m pytest

# The StartOS package type-checks (it pins its own TypeScript and start-sdk).
startos-check:
	cd startos && npm ci && npx tsc --noEmit

# `make test` type-checks it wherever node is installed; in CI a missing node is a failure.
startos-check-if-node:
	@if command -v node >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory startos-check; \
	elif [ -n "$$CI" ]; then \
		echo "ERROR: node not found; CI must install Node.js 20 to type-check startos/" >&2; exit 1; \
	else \
		echo "*** STARTOS PACKAGE NOT TYPE-CHECKED: node is missing (install Node.js 20) ***" >&2; \
	fi

# Benchmarks (not part of make test). The broker's (tests/benchmarks/test_broker_bench.py)
# compares it with nginx and LiteLLM's proxy under wrk, installing wrk and nginx with
# apt-get and LiteLLM in ~/.cache/arbiter-bench when missing; a few minutes, figures in
# test-artifacts/bench-broker.json.
bench: install
	$(TEST_ENV) $(BIN)/python -m pytest -m benchmark tests/benchmarks -s

# A long run under mixed load (broker clients, swaps, dashboard viewers, webhooks)
# against a real `manage.py serve`: RSS and database size every minute.
# ARBITER_SOAK_MINUTES (default 30) sets its length; figures in test-artifacts/soak.json.
# With DATABASE_URL and REDIS_URL set: a fresh PostgreSQL database, and that Redis (use a
# database number nothing else uses, e.g. redis://127.0.0.1:6379/15).
.PHONY: soak
soak: install
	$(TEST_ENV) $(BIN)/python -m pytest -m soak tests/benchmarks/test_soak.py -s

# Re-resolve the pinned dependency set after editing pyproject.toml.
lock:
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev -o requirements.lock --python-version 3.11

clean:
	rm -rf $(VENV) var
