#!/usr/bin/env bash
# `make bench`: the registry benchmarks (docs/benchmarks.md), not part of `make test`.
# PostgreSQL as for the tests (DATABASE_URL, else the local server, else a throwaway
# one); the benchmark uses a database of its own on that server, slipway_bench, and
# drops and recreates it each run. MLflow goes in its own virtualenv under var/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/services.sh
ensure_postgres
command -v curl >/dev/null || _apt_install curl
.venv/bin/python tests/bench/bench_registry.py "$@"
