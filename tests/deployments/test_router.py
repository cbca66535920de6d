"""The local target's router as a real process, in front of small real HTTP backends (no torch, no Django)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from deployments.targets.router import SmoothWeighted, parse_routes
from tests.conftest import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
ROUTER = [sys.executable, "-m", "deployments.targets.router"]


# --- smooth weighted round-robin ----------------------------------------------------------
def picks(weights: dict[int, int], n: int) -> list[int | None]:
    chooser = SmoothWeighted(weights)
    return [chooser.pick() for _ in range(n)]


def test_weights_twenty_eighty_repeat_every_five_picks():
    assert picks({1: 20, 2: 80}, 10) == [2, 2, 1, 2, 2] * 2


def test_weights_ten_ninety_give_the_first_exactly_one_request_in_ten():
    sequence = picks({1: 10, 2: 90}, 100)
    for start in range(0, 100, 10):
        assert sequence[start : start + 10].count(1) == 1


def test_three_releases_get_their_exact_share():
    assert Counter(picks({1: 50, 2: 30, 3: 20}, 100)) == {1: 50, 2: 30, 3: 20}


def test_no_weight_picks_nothing():
    assert picks({}, 2) == [None, None]
    assert picks({1: 0, 2: 0}, 1) == [None]
    assert picks({1: 0, 2: 100}, 3) == [2, 2, 2]


def test_a_routes_file_that_is_not_json_is_refused():
    with pytest.raises(ValueError, match="not a routes file"):
        parse_routes("{")
    with pytest.raises(ValueError, match="not a routes file"):
        parse_routes('{"releases": {"one": {"weight": 1}}}')


# --- backends: small aiohttp servers on a thread of their own ------------------------------
class Backends:
    """HTTP servers that say who they are and echo what they got."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []

    def start(self, name: str) -> str:
        return asyncio.run_coroutine_threadsafe(self._start(name), self.loop).result(10)

    async def _start(self, name: str) -> str:
        async def echo(request: web.Request) -> web.Response:
            body = await request.read()
            if request.path == "/big":
                return web.Response(body=bytes(range(256)) * 12288, content_type="application/octet-stream")
            headers = {"X-Backend": name, "X-Seen": json.dumps(_seen(request, body))}
            if "Inference-Header-Content-Length" in request.headers:
                headers["Inference-Header-Content-Length"] = request.headers["Inference-Header-Content-Length"]
            return web.Response(body=body, headers=headers, content_type=request.content_type)

        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.runners.append(runner)
        return f"http://127.0.0.1:{port}"

    def close(self):
        async def _close():
            for runner in self.runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(_close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _seen(request: web.Request, body: bytes) -> dict:
    return {
        "method": request.method,
        "path_qs": request.path_qs,
        "host": request.headers.get("Host"),
        "sha256": hashlib.sha256(body).hexdigest(),
    }


@pytest.fixture(scope="module")
def backends():
    servers = Backends()
    yield servers
    servers.close()


class RouterProcess:
    def __init__(self, directory: Path):
        self.routes = directory / "routes.json"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "router.log"
        self.generation = 0
        self.proc: subprocess.Popen | None = None

    def write(self, releases: dict[int, tuple[int, list[str]]]) -> None:
        self.generation += 1
        data = {
            "deployment": "iris-test",
            "generation": str(self.generation),
            "releases": {str(n): {"weight": w, "backends": b} for n, (w, b) in releases.items()},
        }
        tmp = self.routes.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.routes)

    def start(self, *args: str) -> RouterProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*ROUTER, "--port", str(self.port), "--routes", str(self.routes), *args],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self.healthy, timeout=20, what=f"the router to answer; its log:\n{self.log.read_text()}")
        return self

    def healthy(self) -> dict | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the router exited with {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            response = httpx.get(f"{self.url}/-/healthy", timeout=1)
        except httpx.TransportError:
            return None
        return response.json() if response.status_code == 200 else None

    def wait_generation(self) -> None:
        wait_for(lambda: self.healthy()["generation"] == str(self.generation), timeout=5, what="the new routes")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def router(tmp_path):
    process = RouterProcess(tmp_path)
    yield process
    process.stop()


@pytest.fixture
def client():
    with httpx.Client(timeout=10) as c:
        yield c


# --- the router process ---------------------------------------------------------------------
def test_the_router_passes_method_path_query_headers_and_binary_body_through(router, backends, client):
    backend = backends.start("a")
    router.write({3: (100, [backend])})
    router.start()
    body = bytes(range(256)) * 800  # binary, 200 KiB
    response = client.post(
        f"{router.url}/v2/models/iris/versions/2/infer?trace=1&q=a%2Fb",
        content=body,
        headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "17"},
    )
    assert response.status_code == 200
    assert response.content == body
    assert response.headers["X-Slipway-Release"] == "3"
    assert response.headers["Inference-Header-Content-Length"] == "17"
    assert response.headers["Content-Type"] == "application/octet-stream"
    seen = json.loads(response.headers["X-Seen"])
    assert seen["method"] == "POST"
    assert seen["path_qs"] == "/v2/models/iris/versions/2/infer?trace=1&q=a%2Fb"
    assert seen["sha256"] == hashlib.sha256(body).hexdigest()
    assert seen["host"] == backend.removeprefix("http://")

    for method in ("GET", "DELETE", "PUT"):
        response = client.request(method, f"{router.url}/anything/else?x=1")
        assert response.status_code == 200
        assert json.loads(response.headers["X-Seen"])["method"] == method


def test_a_large_response_streams_through_whole(router, backends, client):
    router.write({1: (100, [backends.start("a")])})
    router.start()
    response = client.get(f"{router.url}/big")
    assert response.status_code == 200
    assert response.content == bytes(range(256)) * 12288  # 3 MiB: past the router's buffered path


def test_the_routers_own_health_does_not_shadow_the_runtimes(router, backends, client):
    router.write({1: (100, [backends.start("a")])})
    router.start()
    health = client.get(f"{router.url}/-/healthy").json()
    assert health["healthy"] is True
    assert health["pid"] == router.proc.pid
    assert health["weights"] == {"1": 100}
    proxied = client.get(f"{router.url}/v2/health/ready")
    assert json.loads(proxied.headers["X-Seen"])["path_qs"] == "/v2/health/ready"


def test_weights_split_requests_exactly_and_replicas_take_turns(router, backends, client):
    a1, a2, b = backends.start("a1"), backends.start("a2"), backends.start("b")
    router.write({1: (10, [a1, a2]), 2: (90, [b])})
    router.start()
    answered = [client.get(f"{router.url}/v2").headers["X-Backend"] for _ in range(100)]
    assert Counter(answered) == {"b": 90, "a1": 5, "a2": 5}
    assert [name for name in answered if name != "b"] == ["a1", "a2"] * 5


def test_a_new_routes_file_is_picked_up_without_a_restart(router, backends, client):
    a, b = backends.start("a"), backends.start("b")
    router.write({1: (100, [a]), 2: (0, [b])})
    router.start()
    assert client.get(f"{router.url}/v2").headers["X-Backend"] == "a"
    router.write({1: (0, [a]), 2: (100, [b])})
    # Without asking the router: it checks the file's stamp at most every 0.1 s.
    wait_for(lambda: client.get(f"{router.url}/v2").headers["X-Backend"] == "b", timeout=2, what="the new weights")
    assert {client.get(f"{router.url}/v2").headers["X-Backend"] for _ in range(10)} == {"b"}
    assert router.healthy()["weights"] == {"1": 0, "2": 100}


def test_a_broken_routes_file_keeps_the_routes_in_force(router, backends, client):
    router.write({1: (100, [backends.start("a")])})
    router.start()
    router.routes.write_text("{not json")
    time.sleep(0.2)
    assert client.get(f"{router.url}/v2").headers["X-Backend"] == "a"
    assert "keeping the current routes" in router.log.read_text()


def test_a_refused_connection_is_tried_on_another_replica(router, backends, client):
    dead = f"http://127.0.0.1:{free_port()}"
    router.write({1: (100, [dead, backends.start("a")])})
    router.start()
    body = os.urandom(50_000)
    for _ in range(4):  # the dead replica's turn comes up twice
        response = client.post(f"{router.url}/v2/models/m/infer", content=body)
        assert response.status_code == 200
        assert response.headers["X-Backend"] == "a"
        assert json.loads(response.headers["X-Seen"])["sha256"] == hashlib.sha256(body).hexdigest()


def test_a_release_whose_replicas_all_refuse_answers_502_saying_so(router, client):
    dead = f"http://127.0.0.1:{free_port()}"
    router.write({4: (100, [dead])})
    router.start()
    response = client.post(f"{router.url}/v2/models/m/infer", content=b"{}")
    assert response.status_code == 502
    assert response.headers["X-Slipway-Release"] == "4"
    assert "refused the connection" in response.json()["error"]
    assert dead in response.json()["error"]


def test_no_traffic_without_a_weighted_release_or_a_ready_replica(router, client):
    router.write({})
    router.start()
    response = client.get(f"{router.url}/v2/health/ready")
    assert response.status_code == 503
    assert "routes no traffic" in response.json()["error"]
    assert "iris-test" in response.json()["error"]
    router.write({2: (100, [])})
    router.wait_generation()
    response = client.get(f"{router.url}/v2/health/ready")
    assert response.status_code == 503
    assert response.json()["error"].startswith("release 2 has no ready replica")


def test_sigterm_stops_the_router_cleanly(router, backends):
    router.write({1: (100, [backends.start("a")])})
    router.start()
    router.proc.send_signal(signal.SIGTERM)
    assert router.proc.wait(timeout=10) == 0
    assert "stopping" in router.log.read_text()


def test_a_taken_port_stops_the_router_with_a_message(router):
    router.write({})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", router.port))
        taken.listen()
        with open(router.log, "wb") as log:
            proc = subprocess.run(
                [*ROUTER, "--port", str(router.port), "--routes", str(router.routes)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=20,
            )
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{router.port}" in router.log.read_text()
