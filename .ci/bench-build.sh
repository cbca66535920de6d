#!/usr/bin/env bash
# `make bench-build`: Slipway's image builds beside LitServe's `litserve dockerize` image.
# Needs the Docker engine, a registry, the local Debian base image and the wheelhouse
# (.ci/services.sh), a database of its own, and litserve in its own virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/services.sh
ensure_docker
ensure_registry
ensure_base_image
ensure_wheelhouse

# A database of its own, made afresh and dropped at the end: the suite's is not touched.
if [ -z "${DATABASE_URL:-}" ] && command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then
  db=slipway_bbench
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db" >/dev/null
  psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db" >/dev/null
  _cleanup_services+=("psql -h 127.0.0.1 -U postgres -qc 'DROP DATABASE IF EXISTS $db'")
  export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
else
  ensure_postgres
fi

# LitServe in its own virtualenv (never the project's); torch pinned so pip takes the CPU build.
venv=var/bench/litserve-venv
if [ ! -x "$venv/bin/litserve" ]; then
  echo "Installing litserve into $venv (once)..." >&2
  mkdir -p var/bench
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check litserve torch==2.13.0 2>&1 | grep -v "is ignored" >&2 || true
  test -x "$venv/bin/litserve"
fi

echo "== docker $(docker version --format '{{.Server.Version}}'), registry $SLIPWAY_REGISTRY, base $SLIPWAY_BASE_IMAGE_CPU, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
.venv/bin/python tests/bench/bench_build.py "$@"
