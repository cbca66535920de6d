"""`make run`: the web server and a Celery worker (with its beat), stopped together.

Ctrl-C (or SIGTERM, or closing the terminal) stops every process started here; if one
of them dies, the others are stopped too, so nothing is left running half-way.

Each child runs in a process group of its own, so a Ctrl-C reaches only this process,
which then asks each child once to stop. Left to the terminal, the signal would reach
every gunicorn worker directly as well as through its master, and a gthread worker that
gets two stop signals at once can deadlock in its own handler (re-entering its thread
pool's shutdown lock) and outlive its master, holding the port. Whatever has not stopped
after 15 seconds is killed with its whole group.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from controlplane.env import env_int

BIN = Path(sys.executable).parent
GUNICORN_CONF = Path(__file__).resolve().parent / "gunicorn.conf.py"  # worker class, threads, timeout, GC


def bind_address() -> str:
    """Where `make run` serves: SLIPWAY_BIND, or 127.0.0.1:8000."""
    return os.environ.get("SLIPWAY_BIND", "127.0.0.1:8000")


def address_in_use(bind: str) -> bool:
    """Whether something already listens on SLIPWAY_BIND's host and port (a unix: or fd:// bind is not checked)."""
    if bind.startswith(("unix:", "fd://")) or ":" not in bind:
        return False
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        return False  # gunicorn says what is wrong with the address
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds: TIME_WAIT is no obstacle
        try:
            sock.bind(address)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def main() -> int:
    bind = bind_address()
    try:
        web_workers = env_int("SLIPWAY_WEB_WORKERS", 2, minimum=1)
        worker_concurrency = env_int("SLIPWAY_WORKER_CONCURRENCY", 1, minimum=1)
    except ImproperlyConfigured as exc:
        print(exc, file=sys.stderr, flush=True)
        return 1
    if address_in_use(bind):
        print(
            f"{bind} is already in use (another `make run`, or another server). Stop it, or serve Slipway "
            "elsewhere: SLIPWAY_BIND=127.0.0.1:8001 make run",
            file=sys.stderr,
            flush=True,
        )
        return 1
    var = Path(os.environ.get("SLIPWAY_VAR_DIR", Path(__file__).resolve().parent.parent / "var"))
    (var / "celery").mkdir(parents=True, exist_ok=True)
    commands = {
        "web": [
            str(BIN / "gunicorn"),
            "controlplane.wsgi",
            "--config",
            str(GUNICORN_CONF),
            "--bind",
            bind,
            "--workers",
            str(web_workers),
            "--access-logfile",
            "-",
        ],
        "worker": [
            str(BIN / "celery"),
            "-A",
            "controlplane",
            "worker",
            "--beat",
            "--schedule",
            str(var / "celery" / "beat-schedule"),
            "--concurrency",
            str(worker_concurrency),
            "--loglevel",
            "INFO",
        ],
    }
    procs = {name: subprocess.Popen(cmd, start_new_session=True) for name, cmd in commands.items()}
    print(f"Slipway is running on http://{bind}/ (Ctrl-C stops the web server and the worker)", flush=True)

    stopping = False

    def stop(signum=None, frame=None):
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    exit_code = 0
    while not stopping:
        for name, proc in procs.items():
            if proc.poll() is not None:
                print(f"{name} exited with {proc.returncode}; stopping the rest.", file=sys.stderr, flush=True)
                exit_code = proc.returncode or 1
                stopping = True
        time.sleep(0.2)

    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # gunicorn: graceful stop; Celery: warm shutdown
    deadline = time.monotonic() + 15
    for proc in procs.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of its group still there: gunicorn's workers, Celery's pool
        proc.wait()
    still_serving(var)
    return exit_code


def still_serving(var: Path) -> None:
    """Local deployments outlive the control plane, as pods outlive theirs: say which, and how to stop them."""
    ports = sorted((p.parent.name, p.read_text().strip()) for p in (var / "deployments").glob("*/port"))
    if ports:
        endpoints = ", ".join(f"{key} on :{port}" for key, port in ports)
        print(
            f"Still serving: {endpoints} (runtime processes outlive the control plane, as pods do; "
            "the next `make run` manages them again). To stop them: "
            ".venv/bin/python manage.py stop_local_deployments (`make clean` does it too)",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
