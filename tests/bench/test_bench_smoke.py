"""The benchmarks still run: `make bench` and `make bench-rollouts` at their smallest.

They are not part of `make test` and nothing here is timed; this catches a change that
breaks them (the access rules once did, and nobody noticed until the next measurement).
Each run gets its own folder, its own databases on the suite's PostgreSQL server, dropped
afterwards, and a Redis database of its own (the rollouts benchmark purges its queue).
`make bench-build` and `make bench-runtime` build images and download their peers, too
long for the suite; they are checked by hand when they are measured.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.parse

import psycopg
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def on_the_suites_server(name: str) -> str:
    base = os.environ.get("DATABASE_URL", "")
    assert base.startswith(("postgres://", "postgresql://")), "the suite runs on PostgreSQL (DATABASE_URL)"
    return urllib.parse.urlsplit(base)._replace(path=f"/{name}").geturl()


@pytest.fixture
def bench_databases():
    urls = {
        "SLIPWAY_BENCH_DATABASE_URL": on_the_suites_server("slipway_bench_smoke"),
        "SLIPWAY_BENCH_ROLLOUTS_DATABASE_URL": on_the_suites_server("slipway_benchrollouts_smoke"),
    }
    yield urls
    admin = urllib.parse.urlsplit(urls["SLIPWAY_BENCH_DATABASE_URL"])._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        for url in urls.values():
            conn.execute(f'DROP DATABASE IF EXISTS "{urllib.parse.urlsplit(url).path[1:]}" WITH (FORCE)')


def run_bench(script: str, *args: str, env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        [sys.executable, f"tests/bench/{script}", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_the_registry_benchmark_runs(tmp_path, bench_databases):
    out = run_bench(
        "bench_registry.py",
        *("--only", "upload", "--upload-mib", "4", "--upload-rounds", "1", "--versions", "20"),
        env={**bench_databases, "SLIPWAY_BENCH_DIR": str(tmp_path)},
        timeout=300,
    )
    assert "Slipway POST /api/v1/models/big/versions/" in out
    assert (tmp_path / "results.json").exists()


def test_the_rollouts_benchmark_runs(tmp_path, bench_databases):
    broker = urllib.parse.urlsplit(os.environ["CELERY_BROKER_URL"])
    assert broker.scheme.startswith("redis"), "the suite's broker is Redis (CELERY_BROKER_URL)"
    out = run_bench(
        "bench_rollouts.py",
        *("--rounds", "1", "--clicks", "2", "--pause", "0.2"),
        env={
            **bench_databases,
            "SLIPWAY_BENCH_DIR": str(tmp_path),
            "CELERY_BROKER_URL": broker._replace(path="/12").geturl(),
        },
        timeout=400,
    )
    assert "rollback to v1, still up (warm)" in out
    assert "click → badge changes" in out
