"""`make run`'s process manager: Ctrl-C stops the web server and the worker, and leaves nothing behind.

Run for real, as `make run` runs it: SQLite and the filesystem broker in a folder of the
test's own, gunicorn and a Celery worker with its beat. Ctrl-C is what a terminal sends:
SIGINT to the whole foreground process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_ctrl_c_stops_the_web_server_and_the_worker_and_frees_the_port(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CELERY_", "SLIPWAY_"))}
    env |= {"SLIPWAY_VAR_DIR": str(tmp_path / "var"), "SLIPWAY_BIND": f"127.0.0.1:{port}"}
    env["SLIPWAY_ROLLOUT_SWEEP_S"] = "0.5"  # the beat's most frequent housekeeping, a few times during the test
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    log = tmp_path / "devserver.log"
    with log.open("wb") as out:
        # Its own process group, as `make run` has in a terminal (with make).
        server = subprocess.Popen(
            [sys.executable, "-m", "controlplane.devserver"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while "ready." not in log.read_text(errors="replace"):  # Celery's "celery@host ready."
            assert server.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
                time.sleep(0.2)
        time.sleep(2)  # the beat sends the sweeper a few times
        output = log.read_text(errors="replace")
        # Housekeeping that found nothing to do stays out of the way (the banner lists the task once).
        assert "Sending due task" not in output and "sweep_rollouts[" not in output, output[-3000:]
        assert "WARNING" not in output, output  # a clean start says nothing alarming
        started = descendants(server.pid)
        assert len(started) >= 5, started  # gunicorn and its 2 workers, Celery and its pool

        os.killpg(server.pid, signal.SIGINT)
        assert server.wait(timeout=30) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if server.poll() is None:  # the test failed before its Ctrl-C
            # gunicorn and Celery run in sessions of their own: killing the devserver's group would leave them.
            leftover = descendants(server.pid)
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            for pid in leftover:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in started if alive(pid)]
    assert not left, f"still running after Ctrl-C: {left}\n" + log.read_text(errors="replace")[-3000:]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # nobody holds the port


def start_devserver(env: dict[str, str]) -> subprocess.CompletedProcess:
    """`make run`'s process manager, expected to refuse at once; one that starts after all is stopped with Ctrl-C."""
    server = subprocess.Popen(
        [sys.executable, "-m", "controlplane.devserver"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = server.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGINT)  # it stops what it started, as after a Ctrl-C
        stdout, stderr = server.communicate(timeout=30)
    return subprocess.CompletedProcess(server.args, server.returncode, stdout, stderr)


def test_a_taken_address_is_refused_before_anything_starts_and_says_how_to_choose_another(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CELERY_", "SLIPWAY_"))}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env |= {"SLIPWAY_VAR_DIR": str(tmp_path / "var"), "SLIPWAY_BIND": f"127.0.0.1:{port}"}
        done = start_devserver(env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"127.0.0.1:{port} is already in use" in done.stderr and "SLIPWAY_BIND=" in done.stderr, done.stderr
    assert "Slipway is running" not in done.stdout  # it is not: nothing was started
    assert "celery@" not in done.stdout + done.stderr  # no worker came up only to be stopped again


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("SLIPWAY_WEB_WORKERS", "two", "SLIPWAY_WEB_WORKERS='two' is not an integer"),
        ("SLIPWAY_WORKER_CONCURRENCY", "0", "SLIPWAY_WORKER_CONCURRENCY=0 must be at least 1"),
    ],
)
def test_a_bad_process_count_is_refused_naming_the_variable_before_anything_starts(tmp_path, name, value, said):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CELERY_", "SLIPWAY_"))}
    env |= {"SLIPWAY_VAR_DIR": str(tmp_path / "var"), "SLIPWAY_BIND": f"127.0.0.1:{free_port()}", name: value}
    done = start_devserver(env)
    assert done.returncode == 1 and said in done.stderr, done.stdout + done.stderr
    assert "Slipway is running" not in done.stdout
