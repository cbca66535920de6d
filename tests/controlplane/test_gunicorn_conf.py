"""controlplane/gunicorn.conf.py: what a request leaves in reference cycles is freed before the next one runs.

Run through a real gunicorn with the file, as `make run` and production start it, on a
small WSGI app: the first request makes a reference cycle and keeps only a weak reference
to it; the next request answers whether the cycle is still alive. Without the
configuration the cycle waits for the collector's thresholds (700 new objects), so the
same test also proves that it tells the two apart. It also keeps gunicorn's control
socket closed: its default path is one per user, shared by every gunicorn on the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import ROOT, free_port

CONF = ROOT / "controlplane" / "gunicorn.conf.py"

APP = """
import gc
import time
import weakref

class Node:
    pass

cycles = []

def application(environ, start_response):
    if environ["PATH_INFO"] in ("/make", "/hold"):
        node = Node()
        node.self = node  # freed only by the cycle collector
        cycles.append(weakref.ref(node))
        if environ["PATH_INFO"] == "/hold":
            time.sleep(0.02)  # alive while other threads' requests end
        body = b"made"
    elif environ["PATH_INFO"] == "/noop":
        body = b""
    else:
        alive = sum(ref() is not None for ref in cycles)
        body = f"{alive} {gc.get_freeze_count()} {gc.get_threshold()[0]}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def serve(tmp_path, *config: str):
    (tmp_path / "cycles_app.py").write_text(APP)
    port = free_port()
    with (tmp_path / "gunicorn.log").open("wb") as log:
        # One worker, so both requests reach the same process.
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "gunicorn", *config, "--chdir", str(tmp_path)),
                *("--workers", "1", "--bind", f"127.0.0.1:{port}", "--log-level", "debug", "cycles_app:application"),
            ],
            cwd=ROOT,
            # A home of its own: gunicorn's default control socket is $HOME/.gunicorn/gunicorn.ctl.
            env={k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN", "XDG_"))}
            | {"HOME": str(tmp_path / "home")},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}")
    while True:
        try:
            client.get("/status")
            return server, client
        except httpx.TransportError:
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
            time.sleep(0.1)


def control_socket_opened(tmp_path) -> bool:
    # The master decides after its workers have started (its log says which way, at debug level).
    log, deadline = tmp_path / "gunicorn.log", time.monotonic() + 30
    while "Control socket" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return (tmp_path / "home" / ".gunicorn" / "gunicorn.ctl").exists()


WITHOUT_THE_CONF = ["--worker-class", "gthread", "--threads", "8"]  # the same workers, gunicorn's defaults otherwise


@pytest.mark.parametrize("configured", [True, False], ids=["with-the-conf", "gunicorn-defaults"])
def test_a_requests_reference_cycles_are_freed_before_the_next_request(tmp_path, configured):
    server, client = serve(tmp_path, *(["--config", str(CONF)] if configured else WITHOUT_THE_CONF))
    try:
        assert client.get("/make").text == "made"
        alive, frozen, young_threshold = map(int, client.get("/status").text.split())
        control_socket = control_socket_opened(tmp_path)
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=30)
    if configured:
        assert alive == 0
        assert frozen > 10_000  # what the worker had made before its first request: frozen, no longer scanned
        assert young_threshold == 20_000  # one request's objects do not trigger a collection mid-request
        # One path per user: every Slipway on the machine would take it from the one before.
        assert not control_socket
    else:
        assert alive == 1
        assert frozen == 0
        assert control_socket


def test_cycles_of_requests_that_overlapped_are_freed_too(tmp_path):
    """With 8 threads a request ends while others run: their live cycles outlast its collection and
    move to an older generation. They must still be collected there once their requests end."""
    server, client = serve(tmp_path, "--config", str(CONF))
    try:

        def hold(_):
            with httpx.Client(base_url=client.base_url) as own:
                for _ in range(25):
                    assert own.get("/hold").status_code == 200

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(hold, range(8)))
        for _ in range(150):  # enough responses for the older generations' turns to come
            client.get("/noop")
        alive = int(client.get("/status").text.split()[0])
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=30)
    assert alive == 0, f"{alive} of 200 requests' reference cycles are still alive"
