#!/usr/bin/env bash
# `make bench-runtime`: the inference runtime against LitServe, plain FastAPI and the
# ceiling (tests/bench/bench_runtime.py). Not part of `make test`; about 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

# wrk: a compiled load generator, so that the client is never the bottleneck on its one core.
if ! command -v wrk >/dev/null; then
  apt-get install -y wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk"; exit 1; }
fi

# LitServe lives in a virtualenv of its own: the project's .venv gets no benchmark-only
# packages. torch is pinned because an unpinned one resolves to the multi-GB CUDA build.
PEERS=var/bench/peers
if [ ! -f "$PEERS/.installed-0.2.19" ]; then
  rm -rf "$PEERS"
  python3 -m venv "$PEERS"
  "$PEERS/bin/python" -m pip install --quiet --disable-pip-version-check \
    torch==2.13.0 numpy litserve==0.2.19 py-spy
  touch "$PEERS/.installed-0.2.19"
fi

if [ "$(nproc)" -lt 2 ]; then
  echo "bench-runtime needs 2 cores: one for the servers, one for the load generator"; exit 1
fi
# The orchestrator shares the load generator's core, never the servers'.
exec taskset -c "${BENCH_LOAD_CPU:-1}" .venv/bin/python tests/bench/bench_runtime.py "$@"
