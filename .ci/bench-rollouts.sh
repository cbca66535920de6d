#!/usr/bin/env bash
# `make bench-rollouts`: the rollout engine's numbers (docs/benchmarks.md, "Rollouts"), not part of
# `make test`. PostgreSQL and Redis as for the tests (DATABASE_URL / CELERY_BROKER_URL, else the
# local servers, else throwaway ones): the benchmark uses a database of its own on that server,
# slipway_benchrollouts, dropped and recreated each run, and Redis database 12 unless
# CELERY_BROKER_URL names one (its queue is purged: never point it at a database others use).
# Chromium from Debian for the browser part; Playwright comes with requirements-dev.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/services.sh
ensure_postgres
SLIPWAY_TEST_REDIS_DB="${SLIPWAY_BENCH_REDIS_DB:-12}" ensure_redis
ensure_chromium
echo "== $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), broker ${CELERY_BROKER_URL}" >&2
.venv/bin/python tests/bench/bench_rollouts.py "$@"
