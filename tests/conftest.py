"""Shared fixtures: named people, API clients, real model files, a real worker."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.db import DatabaseError, connection
from rest_framework.test import APIClient

from controlplane.audit import Actor
from controlplane.models import Role, RoleBinding
from controlplane.tokens import create_token
from deployments.engine import deployment_ref
from deployments.models import Deployment
from deployments.targets import get_target
from tests.factories import UserFactory
from tests.models_zoo import write_models

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        pytest.exit("The suite runs on PostgreSQL, never SQLite: run 'make test', or set DATABASE_URL.", returncode=2)
    # The suite's own users: PBKDF2's 1,000,000 rounds cost ~0.6 s per user made or logged in, for nothing here.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- In CI nothing may be skipped -------------------------------------------------
def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("SLIPWAY_FORBID_SKIPS") and skipped:
        reporter.write_line(f"{skipped} test(s) skipped: in CI nothing may be skipped.", red=True)
        session.exitstatus = 1


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """The test database, dropped at the end even if the worker or threads still hold connections."""
    yield
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


# --- People ------------------------------------------------------------------------
@pytest.fixture
def admin(db):
    return UserFactory(username="admin", is_staff=True, is_superuser=True)


@pytest.fixture
def alice(db):
    """A data scientist who uploads models, and admin of every environment (tests/controlplane/test_access.py
    checks each role on its own)."""
    user = UserFactory(username="alice")
    RoleBinding.objects.create(user=user, role=Role.ADMIN)
    return user


@pytest.fixture
def alice_token(alice):
    return create_token(alice, "laptop", actor=Actor(user=alice)).raw


@pytest.fixture
def api(alice_token) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {alice_token}")
    return client


@pytest.fixture
def anonymous_api() -> APIClient:
    return APIClient()


# --- Real model artifacts, made once per session ----------------------------------------
@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, Path]:
    return write_models(tmp_path_factory.mktemp("models"))


# --- The audit table refuses TRUNCATE; transactional tests flush with it -----------------
@pytest.fixture
def live_db(transactional_db):
    """Committed data (for the worker and the browser), flushed after the test."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE controlplane_auditevent ENABLE TRIGGER audit_no_truncate")
    yield
    with connection.cursor() as cursor:
        # Django flushes a transactional test's tables with TRUNCATE once it ends.
        cursor.execute("ALTER TABLE controlplane_auditevent DISABLE TRIGGER audit_no_truncate")
        # A task an earlier test left the session's worker (a countdown it holds) may read while the TRUNCATE
        # takes its locks: of two sessions in a deadlock, the one whose deadlock_timeout runs out first is
        # cancelled. Let that be the task's (1 s), not the flush's, which would leave this test's rows behind.
        with contextlib.suppress(DatabaseError):  # a role that may not set it (not a superuser): as before
            cursor.execute("SET deadlock_timeout = '10s'")


# --- A real Celery worker process on the test database -----------------------------------
class CeleryProcess:
    """A real `celery worker` (or `celery beat`) on the test database; the fault tests kill and restart it."""

    def __init__(self, env: dict[str, str], log_path: Path, args: list[str], ready: bytes):
        self.env, self.log_path, self.args, self.ready, self.proc = env, log_path, args, ready, None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            offset = log.tell()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "controlplane", *self.args, "--loglevel", "INFO"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while self.ready not in self.log_path.read_bytes()[offset:]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery {self.args[0]} did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a lost machine would: no cleanup, no acknowledgement."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def _celery_env() -> dict[str, str]:
    db = settings.DATABASES["default"]
    return {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "PYTHONUNBUFFERED": "1",
        # A killed worker's rollout is picked up again within seconds, not a minute.
        "SLIPWAY_ROLLOUT_LEASE_S": "3",
        "SLIPWAY_ROLLOUT_SWEEP_S": "1",
    }


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, django_db_blocker):
    """The worker, without the scheduler: nothing polls the database between tests (a sweeper
    running while a test's tables are truncated can deadlock the truncation)."""
    env = _celery_env()
    subprocess.run(
        [sys.executable, "-m", "celery", "-A", "controlplane", "purge", "-f"], env=env, check=True, capture_output=True
    )
    worker = CeleryProcess(env, Path(settings.VAR_DIR) / "worker.log", ["worker", "--pool", "solo"], b"ready.")
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def scheduler(worker):
    """`celery beat` for one test: the sweepers every second; stopped before the test's tables are flushed."""
    schedule = Path(settings.VAR_DIR) / f"celerybeat-{uuid.uuid4().hex[:6]}"
    beat = CeleryProcess(
        _celery_env(), Path(settings.VAR_DIR) / "beat.log", ["beat", "--schedule", str(schedule)], b"beat: Starting"
    )
    beat.start()
    yield beat
    beat.stop()


@pytest.fixture
def worker(celery_worker_process, live_db):
    yield celery_worker_process
    quiesce_worker()


def quiesce_worker(timeout: float = 20.0) -> None:
    """Let the worker finish what it is running before the test's tables are flushed.

    A task still writing while the flush truncates every table can deadlock it. Messages still
    queued are dropped; a countdown the worker holds runs later, finds no row and does nothing.
    """
    from controlplane.celery import app

    app.control.purge()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = app.control.inspect(timeout=0.5).active()
        if active is not None and not any(active.values()):
            return
        time.sleep(0.1)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_range(count: int) -> int:
    """The first of `count` consecutive loopback ports nobody uses now, below the ephemeral range.

    A range starting at free_port() lies among the ephemeral ports, where the next outgoing
    connection (to PostgreSQL, say) may take the port after it at any moment.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(10_000, low - count)
        if all(_bindable(port) for port in range(first, first + count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports below {low}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_for(predicate, *, timeout: float = 60, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# --- Deployments a test makes, and every runtime process they started gone afterwards ----
@pytest.fixture
def model_name(worker):
    """A model of this test's own, and every runtime process it started gone afterwards."""
    name = f"const-{uuid.uuid4().hex[:6]}"
    yield name
    for deployment in Deployment.objects.filter(model__name=name).select_related("environment", "model"):
        get_target(deployment.environment.target).teardown(deployment_ref(deployment))


# --- API clients that share one handler -------------------------------------------------
_SHARED_HANDLER: dict[str, object] = {}


def bearer_client(raw: str | None = None) -> APIClient:
    """An API client sending `raw` as its bearer token (None: anonymous).

    These clients share one request handler: a new one loads the middleware again, and
    WhiteNoise's scans every static file, a tenth of a second per client. (Not for tests that
    change the middleware's settings, or that call force_authenticate, which sets the handler.)
    """
    client = APIClient()
    client.handler = _SHARED_HANDLER.setdefault("api", client.handler)
    if raw is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client
