# cutover: the two commands are `make demo` and `make test`; both set up what they need.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
BIN   := $(VENV)/bin
STAMP := .cache/setup.stamp
ENTITY ?=
CLIENT ?=
ARGS ?=
CMD ?= run

.PHONY: help setup demo test lint bench backfill verify rollout services-up services-down clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml scripts/setup.sh
	@bash scripts/setup.sh

setup: $(STAMP)  ## Install everything (apt, npm, pip) into project-local folders; idempotent

demo: setup  ## Full migration rehearsal on embedded defaults (KEEP=1 keeps servers running)
	$(BIN)/cutover demo $(if $(KEEP),--keep,)

test: setup  ## Run the test suite against real local servers
	$(BIN)/pytest $(ARGS)

lint: setup  ## ruff, mypy and the layering contract (import-linter)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: setup  ## Benchmarks: JSON in bench-results/, each figure as a ratio to its baseline
	$(PY) -m bench $(ARGS)

backfill: setup  ## Copy history: make backfill ENTITY=orders [CLIENT=acme] [ARGS="--rate 0"]
	@test -n "$(ENTITY)" || { echo "usage: make backfill ENTITY=<entity> [CLIENT=<client>]"; exit 2; }
	$(BIN)/cutover backfill run $(ENTITY) $(if $(CLIENT),--client $(CLIENT),) $(ARGS)

verify: setup  ## Prove both stores agree: make verify ENTITY=orders [CLIENT=acme] [ARGS=--full]
	@test -n "$(ENTITY)" || { echo "usage: make verify ENTITY=<entity> [CLIENT=<client>]"; exit 2; }
	$(BIN)/cutover verify $(ENTITY) $(if $(CLIENT),--client $(CLIENT),) $(ARGS)

rollout: setup  ## Every client to new in waves: make rollout ENTITY=orders [CMD=run|plan|status|pause|resume|abort] [ARGS="--waves 1,10,50,100 --bake 30m"]
	@test -n "$(ENTITY)" || { echo "usage: make rollout ENTITY=<entity> [CMD=run] [ARGS=...]"; exit 2; }
	$(BIN)/cutover rollout $(CMD) $(ENTITY) $(ARGS)

services-up: setup  ## Start the local servers (Pub/Sub, RethinkDB, PostgreSQL, Unleash)
	$(BIN)/cutover services up

services-down:  ## Stop the local servers started by services-up
	$(BIN)/cutover services down

clean: services-down  ## Remove local state (keeps the installed tools)
	rm -rf .cutover bench-results test-artifacts
