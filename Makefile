# The two commands that matter: `make run` and `make test`. Both set everything up themselves.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The venv holds exactly one of the lock files in requirements/ (see scripts/deps.py): `local`
# for make run, `dev` for the checks and tests, `bench` for make bench. Each install target
# returns at once when the venv already holds that lock, or a larger one, unchanged.
DEPS := $(PYTHON) scripts/deps.py
export PYTHONPATH := backend
# Python's bytecode caches are what make a second start fast: uv installs without compiling
# (compiling all of a lock up front costs more than a first start), so each module is compiled
# on its first import and cached in .venv and backend/ (git-ignored), even where the
# environment asks Python not to write them.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: help run stop token test lint typecheck migrations-check pytest tools openapi client-check bench fuzz soak chaos clean
.PHONY: lock lock-check venv venv-local venv-dev venv-bench

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

venv-local:
	@$(DEPS) sync local

venv-dev:
	@$(DEPS) sync dev

venv-bench:
	@$(DEPS) sync bench

venv: venv-dev

lock: ## Resolve pyproject.toml again into requirements/*.txt (UPGRADE=1: newest allowed versions)
	@$(DEPS) lock $(if $(UPGRADE),--upgrade)

lock-check: ## Fail when requirements/*.txt no longer match pyproject.toml (make test runs it first)
	@$(DEPS) check

run: venv-local ## Serve the API on 127.0.0.1:8000 (embedded PostgreSQL + local Cognito unless configured)
	@$(PY) -m devtools.run

stop: venv-local ## Stop everything make run started: API, Cognito emulator, embedded PostgreSQL
	@$(PY) -m devtools.stop

token: venv-local ## Sign in as any user of the running make run and print a token (EMAIL=...)
	@$(PY) -m devtools.token $(if $(EMAIL),--email '$(EMAIL)')

tools: ## Install the system tools the tests need (nginx, systemd-analyze, Chromium, Node.js) with apt
	@bash scripts/install_test_tools.sh

lint: venv-dev ## ruff check + ruff format --check + import contracts (layers, no cycles)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: venv-dev ## mypy, strict on backend/app
	$(VENV)/bin/mypy

migrations-check: venv-dev ## alembic check, squawk, up/down/up and the previous release on the new schema (throwaway database)
	$(PY) -m devtools.migrations_check

# One pytest worker per core (pytest-xdist): most tests wait on real servers, timeouts and
# processes rather than compute, so two workers on two cores halve the wait. Each worker has
# its own PostgreSQL server and Cognito emulator. PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= auto

pytest: venv-dev tools ## The test suite (real PostgreSQL, moto Cognito), one worker per core
	$(VENV)/bin/pytest --numprocesses=$(PYTEST_WORKERS) --dist=worksteal $(PYTEST_ARGS)

openapi: venv-dev ## Write the app's OpenAPI document to openapi.json (commit it with the change)
	$(PY) -m devtools.openapi openapi.json

# The SPA's view of the API: a TypeScript client generated from openapi.json with
# @hey-api/openapi-ts, and code that uses it, type-checked with tsc --strict. node_modules is
# installed with `npm ci` only when the lock file changed (the stamp is named after its checksum).
TS_CLIENT := clients/typescript
TS_STAMP := $(TS_CLIENT)/node_modules/.installed-$(shell cksum < $(TS_CLIENT)/package-lock.json | cut -d' ' -f1)

$(TS_STAMP): $(TS_CLIENT)/package-lock.json | tools
	cd $(TS_CLIENT) && npm ci --no-audit --no-fund --loglevel=error
	@rm -f $(TS_CLIENT)/node_modules/.installed-*; touch $@

client-check: $(TS_STAMP) ## Generate the TypeScript client from openapi.json and type-check it (tsc --strict)
	cd $(TS_CLIENT) && rm -rf generated && npx --no-install openapi-ts --silent && npx --no-install tsc -p .

test: lock-check lint typecheck migrations-check client-check pytest ## Everything CI runs

fuzz: venv-dev ## Property-based tests of every operation with a large budget (FUZZ_EXAMPLES=300)
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-300} $(VENV)/bin/pytest -p no:cacheprovider backend/tests/hardening/test_fuzz.py $(PYTEST_ARGS)

soak: venv-dev ## 60 s of mixed traffic at 50 connections against uvicorn (SOAK_SECONDS=...)
	SOAK_SECONDS=$${SOAK_SECONDS:-60} $(VENV)/bin/pytest -p no:cacheprovider -s backend/tests/soak $(PYTEST_ARGS)

chaos: venv-dev ## Two instances, mixed traffic, combined faults, then the identity invariants (CHAOS_SECONDS=180)
	CHAOS_SECONDS=$${CHAOS_SECONDS:-180} $(PY) -m tests.chaos $(CHAOS_ARGS)

bench: venv-bench ## Throughput and fixed-rate tails vs a bare baseline, 100k users, 1M cases; exits 0 pass, 1 fail, 3 inconclusive (BENCH_ARGS=...)
	$(PY) -m bench.run $(BENCH_ARGS)

clean: ## Remove the venv, caches and local data (stopping make run first)
	@if test -x $(PY); then $(PY) -m devtools.stop; fi
	rm -rf $(VENV) .local .mypy_cache .ruff_cache .pytest_cache
