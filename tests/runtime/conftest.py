"""Runtime test fixtures: real model files and real runtime processes on loopback ports.

No Django and no database here: the runtime is a standalone package. Servers are
session-scoped and started side by side, because importing torch and loading an
archive is most of a test's cost.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.runtime.zoo import Entry, write_zoo

logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request drowns failures

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    """A runtime process, its port and its log."""

    name: str
    proc: subprocess.Popen
    port: int
    log_path: Path
    entry: Entry | None = None
    client: httpx.Client = field(init=False)

    def __post_init__(self):
        self.client = httpx.Client(base_url=self.url, timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"runtime {self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if self.client.get("/v2/health/ready").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"runtime {self.name} not ready after {timeout}s:\n{self.log()[-3000:]}")

    def wait_exit(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout=timeout)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include `labels`, read from /metrics."""
        text = self.client.get("/metrics").text
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]
        assert samples, f"{name} not in /metrics"
        return sum(s.value for s in samples if labels.items() <= s.labels.items())

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_runtime(
    tmp_path: Path, name: str, model: Path, *args: str, entry: Entry | None = None, env: dict | None = None
) -> Server:
    """Start `python -m inference_runtime` on a free port; don't wait for it."""
    port = free_port()
    log_path = tmp_path / f"{name}-{port}.log"
    command = [sys.executable, "-m", "inference_runtime", "--model", str(model), "--name", name]
    command += ["--host", "127.0.0.1", "--port", str(port), "--num-threads", "1", *args]
    if entry is not None and entry.signature is not None:
        command += ["--signature", entry.signature_json]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    return Server(name, proc, port, log_path, entry)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> dict[str, Entry]:
    return write_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def servers(zoo, tmp_path_factory):
    """One ready runtime per model, started in parallel and shared by the session."""
    logs = tmp_path_factory.mktemp("runtime-logs")
    settings = {
        "mlp": ("--max-batch-size", "32", "--max-delay-ms", "5", "--max-body-bytes", "1048576"),
        "cnn": (),
        "two_inputs": (),
        "sequence": (),
        "datatypes": (),
        "mlp_pt2": ("--sha256", hashlib.sha256(zoo["mlp_pt2"].path.read_bytes()).hexdigest()),
        "mlp_bf16": ("--dtype", "bfloat16"),
    }
    started = {
        name: start_runtime(
            logs, name, zoo[name.removesuffix("_bf16")].path, *args, entry=zoo[name.removesuffix("_bf16")]
        )
        for name, args in settings.items()
    }
    # TorchScript records no shapes: served without a signature, inputs go unchecked and unbatched.
    started["mlp_unsigned"] = start_runtime(logs, "mlp_unsigned", zoo["mlp"].path)
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture
def spawn(tmp_path):
    """Start extra runtimes for one test; stopped (SIGTERM, then SIGKILL) after it."""
    spawned: list[Server] = []

    def _spawn(name: str, model: Path, *args: str, entry: Entry | None = None, env: dict | None = None) -> Server:
        server = start_runtime(tmp_path, name, model, *args, entry=entry, env=env)
        spawned.append(server)
        return server

    yield _spawn
    for server in spawned:
        server.stop()
