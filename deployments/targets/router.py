"""The local target's router: one stable port per deployment, weighted between releases.

`python -m deployments.targets.router --host H --port P --routes FILE` proxies every
request to a replica of one release. The release is picked by smooth weighted
round-robin, which is deterministic (weights 10/90 send exactly 1 request of every 10
to the first) so a canary's share is exact even at low traffic; replicas of a release
take turns. The routes file is JSON written atomically by the local target:

    {"deployment": "iris-prod", "generation": "...",
     "releases": {"1": {"weight": 90, "backends": ["http://127.0.0.1:41234"]}, ...}}

and is re-read when it changes (checked at most every 0.1 s). Standalone: no Django.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

log = logging.getLogger("slipway.router")

RELOAD_INTERVAL_S = 0.1
CONNECT_TIMEOUT_S = 2.0
BUFFER_LIMIT = 1024 * 1024  # responses up to this size are read whole and sent in one write
RELEASE_HEADER = "X-Slipway-Release"
HEALTH_PATH = "/-/healthy"
# Meaningful for one connection only (RFC 9110 7.6.1), or recomputed by aiohttp on each side.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "host",
    }
)


class SmoothWeighted:
    """Smooth weighted round-robin (as nginx does it): exact shares, evenly spread.

    Each pick adds every weight to its running score, takes the highest score and
    subtracts the total from it; after sum(weights) picks every score is 0 again.
    """

    def __init__(self, weights: dict[int, int]):
        self.weights = {key: weight for key, weight in sorted(weights.items()) if weight > 0}
        self.total = sum(self.weights.values())
        self.scores = dict.fromkeys(self.weights, 0)

    def pick(self) -> int | None:
        if not self.total:
            return None
        scores = self.scores
        best, best_score = None, None
        for key, weight in self.weights.items():
            score = scores[key] + weight
            scores[key] = score
            if best_score is None or score > best_score:
                best, best_score = key, score
        scores[best] -= self.total
        return best


@dataclass
class Release:
    number: int
    weight: int
    backends: list[str]
    turn: int = 0

    def next_backend(self) -> str | None:
        if not self.backends:
            return None
        backend = self.backends[self.turn % len(self.backends)]
        self.turn += 1
        return backend


@dataclass
class Routes:
    deployment: str = ""
    generation: str = ""
    releases: dict[int, Release] = field(default_factory=dict)
    chooser: SmoothWeighted = field(default_factory=lambda: SmoothWeighted({}))

    @property
    def weights(self) -> dict[int, int]:
        return {number: release.weight for number, release in self.releases.items()}


def parse_routes(text: str) -> Routes:
    """The routes file's JSON; raises ValueError saying what is wrong with it."""
    try:
        data = json.loads(text)
        releases = {
            int(number): Release(int(number), int(entry.get("weight", 0)), [str(b) for b in entry.get("backends", [])])
            for number, entry in data.get("releases", {}).items()
        }
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a routes file: {exc}") from None
    if any(release.weight < 0 for release in releases.values()):
        raise ValueError("weights must be 0 or more")
    routes = Routes(str(data.get("deployment", "")), str(data.get("generation", "")), releases)
    routes.chooser = SmoothWeighted(routes.weights)
    return routes


class Router:
    """The proxy: picks a release, then a replica, and streams the exchange through."""

    def __init__(self, routes_path: str, *, read_timeout_s: float = 300.0):
        self.routes_path = routes_path
        self.read_timeout_s = read_timeout_s
        self.routes = Routes()
        self._stamp: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self.session: aiohttp.ClientSession | None = None

    # --- routes file -------------------------------------------------------------------
    def refresh(self, *, force: bool = False) -> None:
        """Re-read the routes file if it changed; a bad file keeps the routes in force."""
        now = time.monotonic()
        if not force and now < self._next_check:
            return
        self._next_check = now + RELOAD_INTERVAL_S
        try:
            st = os.stat(self.routes_path)
        except FileNotFoundError:
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)  # os.replace gives a new inode
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            with open(self.routes_path, encoding="utf-8") as fh:
                routes = parse_routes(fh.read())
        except (OSError, ValueError) as exc:
            log.error("keeping the current routes: %s: %s", self.routes_path, exc)
            return
        old = self.routes
        if routes.weights == old.weights:
            routes.chooser = old.chooser  # same weights: the rotation goes on where it was
            for number, release in routes.releases.items():
                release.turn = old.releases[number].turn
        self.routes = routes
        log.info(
            "routes %s: %s",
            routes.generation or "-",
            ", ".join(
                f"release {r.number} {r.weight}% to {len(r.backends)} replica(s)" for r in routes.releases.values()
            )
            or "no releases",
        )

    # --- HTTP ----------------------------------------------------------------------------
    async def start(self, app: web.Application) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=None),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=self.read_timeout_s),
            auto_decompress=False,  # bytes pass through as the replica sent them
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self.refresh(force=True)

    async def stop(self, app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    async def healthy(self, request: web.Request) -> web.Response:
        """The router's own health, and the routes it serves now (the target waits on `generation`)."""
        self.refresh(force=True)
        routes = self.routes
        return web.json_response(
            {
                "healthy": True,
                "pid": os.getpid(),
                "deployment": routes.deployment,
                "generation": routes.generation,
                "weights": {str(number): weight for number, weight in routes.weights.items()},
            }
        )

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        self.refresh()
        routes = self.routes
        number = routes.chooser.pick()
        if number is None:
            return _error(503, f"deployment {routes.deployment!r} routes no traffic to any release yet", None)
        release = routes.releases[number]
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP)
        body = request.content if request.body_exists else None
        path = request.raw_path  # as the client sent it: no re-quoting on the way through
        refused: list[str] = []
        for _ in range(2):  # a refused connection is tried once more on another replica
            backend = release.next_backend()
            if backend is None or backend in refused:
                break
            try:
                upstream = await self.session.request(
                    request.method, URL(backend + path, encoded=True), headers=headers, data=body, allow_redirects=False
                )
            except aiohttp.ClientConnectorError:
                refused.append(backend)
                continue
            except TimeoutError:
                return _error(504, f"release {number}: replica {backend} did not answer in time", number)
            except aiohttp.ClientError as exc:
                return _error(502, f"release {number}: replica {backend} failed: {exc}", number)
            try:
                return await self._relay(request, upstream, number)
            finally:
                upstream.release()
        if refused:
            return _error(
                502,
                f"release {number}: replica(s) {', '.join(refused)} refused the connection; "
                "the replica may have stopped: check the deployment's status",
                number,
            )
        return _error(503, f"release {number} has no ready replica (starting, stopped or removed)", number)

    async def _relay(self, request: web.Request, upstream: aiohttp.ClientResponse, number: int) -> web.StreamResponse:
        headers = CIMultiDict(
            (k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"
        )
        headers[RELEASE_HEADER] = str(number)
        length = upstream.content_length
        if request.method != "HEAD" and length is not None and length <= BUFFER_LIMIT:
            try:
                body = await upstream.read()
            except TimeoutError:
                return _error(504, f"release {number}: the replica stopped answering mid-response", number)
            except aiohttp.ClientError as exc:
                return _error(502, f"release {number}: the replica's response broke off: {exc}", number)
            return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        if length is not None:
            response.content_length = length
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(64 * 1024):
            await response.write(chunk)
        await response.write_eof()
        return response


def _error(status: int, message: str, release: int | None) -> web.Response:
    headers = {RELEASE_HEADER: str(release)} if release is not None else None
    return web.json_response({"error": message}, status=status, headers=headers)


def build_app(router: Router) -> web.Application:
    app = web.Application()
    app.on_startup.append(router.start)
    app.on_cleanup.append(router.stop)
    app.router.add_get(HEALTH_PATH, router.healthy)
    app.router.add_route("*", "/{tail:.*}", router.proxy)
    return app


async def serve(host: str, port: int, routes_path: str, read_timeout_s: float) -> None:
    """Serve until SIGTERM or SIGINT, then let in-flight requests finish (up to 10 s)."""
    router = Router(routes_path, read_timeout_s=read_timeout_s)
    runner = web.AppRunner(build_app(router), access_log=None, shutdown_timeout=10.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, host, port, backlog=4096).start()
        log.info("router for %s listening on %s:%d (pid %d)", routes_path, host, port, os.getpid())
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.targets.router", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--routes", required=True, help="the routes JSON file, re-read when it changes")
    parser.add_argument("--read-timeout-s", type=float, default=300.0, help="longest wait for a replica's bytes")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    loop_factory = None
    with contextlib.suppress(ImportError):  # optional: the runtime's requirements have it, the control plane's not
        import uvloop

        loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(args.host, args.port, args.routes, args.read_timeout_s))
    except OSError as exc:  # the port is taken, or the address is not this machine's
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
