# Slipway: `make run` starts it on the embedded default, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --quiet --disable-pip-version-check

.PHONY: run test lint bench bench-runtime bench-build bench-rollouts demo-model migrate check clean

# The validator's child and the dev environment's local target run with this Python too.
# (Makefile: a change to this recipe reinstalls an existing .venv as well.)
$(VENV)/.run-installed: Makefile requirements.txt requirements-validator.txt inference_runtime/requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.txt -r requirements-validator.txt -r inference_runtime/requirements.txt
	@touch $@

$(VENV)/.dev-installed: $(VENV)/.run-installed requirements-dev.txt
	$(PIP) install -r requirements-dev.txt
	@touch $@

migrate: $(VENV)/.run-installed
	$(BIN)/python manage.py migrate --no-input

## run: migrate, make sure an admin exists, start the web server and a worker (Ctrl-C stops both)
run: migrate
	@$(BIN)/python manage.py ensure_admin
	@$(BIN)/python manage.py ensure_environment
	@$(BIN)/python -m controlplane.devserver

## demo-model: write a small TorchScript model to var/demo/ and print its signature
demo-model: $(VENV)/.run-installed
	@$(BIN)/python manage.py demo_model

## test: the whole suite on PostgreSQL, Redis, a real Celery worker and a real browser
test: $(VENV)/.dev-installed
	@bash .ci/test.sh

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## bench: registry benchmarks (1 GiB upload, 10k-version lists vs MLflow); not part of `make test`
bench: $(VENV)/.dev-installed
	@bash .ci/bench.sh

## bench-runtime: inference runtime vs LitServe, plain FastAPI and the ceiling (~10 min); not part of `make test`
bench-runtime: $(VENV)/.run-installed
	@bash .ci/bench-runtime.sh

## bench-build: image builds (cold, new version, cache hit, sizes) vs `litserve dockerize`; not part of `make test`
bench-build: $(VENV)/.run-installed
	@bash .ci/bench-build.sh $(ARGS)

## bench-rollouts: deploy vs warm/cold rollback, and the deployment page's latency in Chromium (~5 min); not part of `make test`
bench-rollouts: $(VENV)/.dev-installed
	@bash .ci/bench-rollouts.sh $(ARGS)

# The local target's runtime processes outlive var/ unless stopped first.
clean:
	@if [ -x $(VENV)/bin/python ] && [ -d var/deployments ]; then $(VENV)/bin/python manage.py stop_local_deployments; fi
	rm -rf $(VENV) var
