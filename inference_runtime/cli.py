"""`python -m inference_runtime`: parse the configuration once, then serve until SIGTERM."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn

from inference_runtime import __version__
from inference_runtime.config import Config, parse_config
from inference_runtime.server import Runtime, create_app

log = logging.getLogger("inference_runtime")


class RuntimeServer(uvicorn.Server):
    """uvicorn, with SIGTERM meaning "drain": readiness turns 503, in-flight requests finish.

    A second SIGTERM or SIGINT stops at once. uvicorn itself would stop accepting
    connections and re-raise the signal after shutting down; a drained runtime exits 0.
    """

    def __init__(self, config: uvicorn.Config, runtime: Runtime):
        super().__init__(config)
        self.runtime = runtime
        self.exit_code = 0
        self._signalled = False

    def request_exit(self, code: int) -> None:
        self.exit_code = code
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signalled:
            log.warning("second %s: stopping now", signal.Signals(sig).name)
            self.should_exit = self.force_exit = True
            return
        self._signalled = True
        log.info("%s received", signal.Signals(sig).name)
        if not self.runtime.begin_drain_threadsafe():
            self.should_exit = True


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def build_server(config: Config) -> RuntimeServer:
    runtime = Runtime(config)
    app = create_app(runtime)
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        lifespan="on",
        access_log=False,  # a log line per request costs more than a small model's forward pass
        server_header=False,
        log_config=None,
        log_level=config.log_level,
        timeout_graceful_shutdown=5,
        backlog=4096,
    )
    server = RuntimeServer(uv_config, runtime)
    runtime.request_exit = server.request_exit
    return server


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    _configure_logging(config.log_level)
    log.info("Slipway inference runtime %s, pid %d", __version__, os.getpid())
    server = build_server(config)
    server.run()
    code = server.exit_code
    if server.runtime.state == "loading" or not server.started:
        code = code or (0 if server._signalled else 2)
    # The model thread may still be inside torch (a load interrupted by SIGTERM): don't wait for it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
