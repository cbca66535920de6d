#!/usr/bin/env bash
# `make test`: static checks, then the whole pytest suite on real services.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/services.sh
ensure_postgres
ensure_redis
ensure_chromium
ensure_docker
ensure_registry
ensure_base_image
ensure_wheelhouse

export SLIPWAY_VAR_DIR="${SLIPWAY_VAR_DIR:-$(mktemp -d /tmp/slipway-test.XXXXXX)}"
export DJANGO_SECRET_KEY="${DJANGO_SECRET_KEY:-test-only-$(head -c 24 /dev/urandom | base64)}"
BIN=.venv/bin
echo "== database: ${DATABASE_URL%%@*}@…  broker: $CELERY_BROKER_URL  var: $SLIPWAY_VAR_DIR"
echo "== docker: $(docker version --format '{{.Server.Version}}')  registry: $SLIPWAY_REGISTRY  base: $SLIPWAY_BASE_IMAGE_CPU"

echo "== ruff"
$BIN/ruff check .
$BIN/ruff format --check . >/dev/null || { $BIN/ruff format --diff . | head -50; echo "run: .venv/bin/ruff format ."; exit 1; }

echo "== django checks"
$BIN/python manage.py check --fail-level WARNING
$BIN/python manage.py makemigrations --check --dry-run >/dev/null || {
  echo "Models changed without a migration: run 'python manage.py makemigrations'."; exit 1; }
# Production as the README describes it: behind TLS, its own secret key, a cache every web process shares.
SLIPWAY_HTTPS=true DJANGO_SECRET_KEY="$(head -c 48 /dev/urandom | base64)" SLIPWAY_CACHE_URL=redis://127.0.0.1:6379/1 \
  $BIN/python manage.py check --deploy --fail-level WARNING

echo "== pytest"
# Not exec: the EXIT trap then stops the throwaway services this script started (the registry...).
$BIN/python -m pytest "$@"
