# The two commands that matter: `make run` and `make test`. Both set everything up themselves.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export PYTHONPATH := backend

.PHONY: help run stop token test lint typecheck migrations-check pytest tools openapi client-check bench fuzz soak clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 needed" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

run: $(STAMP) ## Serve the API on 127.0.0.1:8000 (embedded PostgreSQL + local Cognito unless configured)
	@$(PY) -m devtools.run

stop: $(STAMP) ## Stop everything make run started: API, Cognito emulator, embedded PostgreSQL
	@$(PY) -m devtools.stop

token: $(STAMP) ## Sign in as any user of the running make run and print a token (EMAIL=...)
	@$(PY) -m devtools.token $(if $(EMAIL),--email '$(EMAIL)')

tools: ## Install the system tools the tests need (nginx, systemd-analyze, Chromium, Node.js) with apt
	@bash scripts/install_test_tools.sh

lint: $(STAMP) ## ruff check + ruff format --check + import contracts (layers, no cycles)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(STAMP) ## mypy, strict on backend/app
	$(VENV)/bin/mypy

migrations-check: $(STAMP) ## alembic check on a throwaway embedded database
	$(PY) -m devtools.migrations_check

pytest: $(STAMP) tools ## The test suite (real PostgreSQL, moto Cognito)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

openapi: $(STAMP) ## Write the app's OpenAPI document to openapi.json (commit it with the change)
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

test: lint typecheck migrations-check client-check pytest ## Everything CI runs

fuzz: $(STAMP) ## Property-based tests of every operation with a large budget (FUZZ_EXAMPLES=300)
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-300} $(VENV)/bin/pytest -p no:cacheprovider backend/tests/hardening/test_fuzz.py $(PYTEST_ARGS)

soak: $(STAMP) ## 60 s of mixed traffic at 50 connections against uvicorn (SOAK_SECONDS=...)
	SOAK_SECONDS=$${SOAK_SECONDS:-60} $(VENV)/bin/pytest -p no:cacheprovider -s backend/tests/soak $(PYTEST_ARGS)

BENCH_STAMP := $(VENV)/.bench-installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

$(BENCH_STAMP): $(STAMP)
	@$(PY) -m pip install --quiet -e '.[dev,bench]'
	@rm -f $(VENV)/.bench-installed-*; touch $@

bench: $(BENCH_STAMP) ## Throughput and fixed-rate tails vs a bare baseline, 100k users, 1M cases; exits 0 pass, 1 fail, 3 inconclusive (BENCH_ARGS=...)
	$(PY) -m bench.run $(BENCH_ARGS)

clean: ## Remove the venv, caches and local data (stopping make run first)
	@if test -x $(PY); then $(PY) -m devtools.stop; fi
	rm -rf $(VENV) .local .mypy_cache .ruff_cache .pytest_cache
