"""uvicorn around the runtime, with SIGTERM meaning "drain"."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import uvicorn

from inference_runtime.config import Config
from inference_runtime.server import Runtime, create_app

log = logging.getLogger("inference_runtime")

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools: uvicorn's h11 protocol, without the header deadline below
    HttpToolsProtocol = None


if HttpToolsProtocol is not None:

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol, noting when each request began to arrive until its headers are all in.

        uvicorn 0.54 has no timeout on request headers: its keep-alive timer stops at a request's first byte,
        and none runs before a connection's first request, so a client that sends its headers a byte every few
        seconds, or nothing at all, holds a connection for ever (slowloris). RuntimeServer closes a connection
        whose headers have not arrived within the request timeout. A timestamp, not a timer per request: two
        attribute writes cost less than scheduling and cancelling a timer on the hot path."""

        headers_since: float | None = None  # loop time the request now arriving began; None once its headers are in

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.headers_since = self.loop.time()

        def on_message_begin(self) -> None:
            self.headers_since = self.loop.time()
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self.headers_since = None
            super().on_headers_complete()


class RuntimeServer(uvicorn.Server):
    """On SIGTERM or SIGINT readiness turns 503 and in-flight requests finish; then it exits 0.

    A second signal stops at once. (Plain uvicorn closes its sockets at once and
    re-raises the signal once it has shut down.)
    """

    def __init__(self, config: uvicorn.Config, runtime: Runtime):
        super().__init__(config)
        self.runtime = runtime
        self.exit_code = 0
        self.signalled = False

    def request_exit(self, code: int, force: bool = False) -> None:
        """Stop serving; `force`: without waiting for open connections and tasks (the drain timed out)."""
        self.exit_code = code
        self.should_exit = True
        self.force_exit = self.force_exit or force

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.signalled:
            name = signal.Signals(sig).name
            log.warning("second %s: stopping now", name)
            self.runtime.abandon_threadsafe(f"a second {name}")
            self.should_exit = self.force_exit = True
            return
        self.signalled = True
        log.info("%s received", signal.Signals(sig).name)
        if not self.runtime.begin_drain_threadsafe():
            log.info("stopping before the model began to load")
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if counter % 10 == 0:  # once a second
            self.close_slow_connections()
        return await super().on_tick(counter)

    def close_slow_connections(self) -> None:
        """Close the connections whose request headers have not all arrived within the request timeout (or
        that have sent nothing that long since they opened): see HeaderDeadlineProtocol."""
        timeout = self.runtime.config.request_timeout_s
        now = asyncio.get_running_loop().time()
        for connection in list(self.server_state.connections):
            since = getattr(connection, "headers_since", None)
            if since is not None and now - since > timeout and not connection.transport.is_closing():
                connection.transport.close()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
        # uvicorn put back the handlers it found, which stop a start-up with status 0: the status is decided now.
        if threading.current_thread() is threading.main_thread():  # as uvicorn: only there can signals be set
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)


def build_server(config: Config) -> RuntimeServer:
    runtime = Runtime(config)
    uv_config = uvicorn.Config(
        create_app(runtime),
        host=config.host,
        port=config.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=HeaderDeadlineProtocol if HttpToolsProtocol is not None else "h11",
        lifespan="on",
        access_log=False,  # a log line per request costs more than a small model's forward pass
        proxy_headers=False,  # nothing here reads the client address; its middleware is a hop per request
        server_header=False,
        log_config=None,
        log_level=config.log_level,
        timeout_graceful_shutdown=5,
        backlog=4096,
    )
    server = RuntimeServer(uv_config, runtime)
    runtime.request_exit = server.request_exit
    return server


def serve(config: Config) -> int:
    """Serve until drained; the exit status: 0 after a drain, 2 when the model was refused."""
    server = build_server(config)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn's own refusal to start (it has logged why: the port is taken, say)
        log.error(
            "refusing to start: could not listen on %s:%d (exit status %s from uvicorn)",
            config.host,
            config.port,
            exc.code,
        )
        return 2
    if server.runtime.state == "loading" and not server.signalled:
        return 2  # uvicorn gave up before the model loaded
    return server.exit_code
