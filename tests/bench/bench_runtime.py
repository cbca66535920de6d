"""`make bench-runtime`: the Slipway inference runtime against LitServe, plain FastAPI and the ceiling.

Method (docs/benchmarks.md, "Inference runtime"):
- Every server is pinned to one core (BENCH_SERVER_CPU, 0) with one torch thread; wrk,
  a compiled closed-loop load generator, is pinned to the other (BENCH_LOAD_CPU, 1).
- Same TorchScript models for everyone: an MLP 256→512→512→10 and a small CNN on
  1x28x28, one row per request, the same Open Inference Protocol JSON body.
- Contenders: the runtime (JSON and binary tensor bodies, batching on), LitServe
  (batching on, same max batch and timeout), plain FastAPI (no batching), and the
  ceiling: T_http (bare ASGI under uvicorn, parses the body, small answer), T_model
  (in-process model(x) at the max batch size), T_pred = 1/(1/T_http + 1/T_model).
- All servers of a model stay up for a round, but only the one being measured runs:
  the others are SIGSTOPped, since an idle LitServe worker polls its queue every
  millisecond and would tax whoever shares its core. Within a round, the order of
  contenders is shuffled at each concurrency; each point is the median over rounds.

Environment knobs: BENCH_ROUNDS (3), BENCH_DURATION_S (4), BENCH_SERVER_CPU,
BENCH_LOAD_CPU, BENCH_MODELS (mlp,cnn), BENCH_DEVICE (cpu, or cuda: every contender's model
on the GPU), BENCH_PEERS_PYTHON (LitServe's Python; var/bench/peers), BENCH_OUT (where the
results go; var/bench). Results: a table on stdout, JSON and Markdown under BENCH_OUT.
.ci/device-bench-runtime.sh runs it on a lent GPU machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
VAR = ROOT / "var" / "bench"
PEERS_PYTHON = Path(os.environ.get("BENCH_PEERS_PYTHON") or VAR / "peers" / "bin" / "python")
OUT = Path(os.environ.get("BENCH_OUT") or VAR)
DEVICE = os.environ.get("BENCH_DEVICE", "cpu")
if DEVICE not in ("cpu", "cuda"):
    raise SystemExit(f"BENCH_DEVICE is {DEVICE!r}: cpu or cuda")
SERVER_CPU = os.environ.get("BENCH_SERVER_CPU", "0")
LOAD_CPU = os.environ.get("BENCH_LOAD_CPU", "1")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
DURATION_S = int(os.environ.get("BENCH_DURATION_S", "4"))
MODELS = os.environ.get("BENCH_MODELS", "mlp,cnn").split(",")
CONCURRENCY = [1, 8, 32, 64]
MAX_BATCH = 16
MAX_DELAY_MS = 2.0
# The ceiling is defined at the top concurrency only; measuring it elsewhere buys nothing.
CEILING_CONCURRENCY = 64
# Single-threaded BLAS/OpenMP everywhere, also for code that never calls torch.set_num_threads.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(256, 512),
            torch.nn.ReLU(),
            torch.nn.Linear(512, 512),
            torch.nn.ReLU(),
            torch.nn.Linear(512, 10),
        )

    def forward(self, x):
        return self.net(x)


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.head = torch.nn.Linear(16 * 7 * 7, 10)

    def forward(self, image):
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(image)), 2)
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


@dataclass
class Model:
    name: str
    input_name: str
    row_shape: list[int]
    path: Path = None
    signature: str = ""
    json_body: Path = None
    binary_body: Path = None
    binary_header_length: int = 0
    expected: np.ndarray = None


def write_models() -> dict[str, Model]:
    """TorchScript archives (what every contender loads), bodies and expected outputs."""
    torch.manual_seed(0)
    out = VAR / "models"
    out.mkdir(parents=True, exist_ok=True)
    specs = {"mlp": (MLP(), "x", [256]), "cnn": (CNN(), "image", [1, 28, 28])}
    models = {}
    for name in MODELS:
        module, input_name, row_shape = specs[name]
        m = Model(name, input_name, row_shape)
        m.path = out / f"{name}.pt"
        torch.jit.save(torch.jit.script(module.eval()), m.path)
        shape = [-1, *row_shape]
        m.signature = json.dumps({"inputs": [{"name": input_name, "datatype": "FP32", "shape": shape}]})
        x = np.random.default_rng(1).random([1, *row_shape], dtype=np.float32)
        with torch.inference_mode():
            m.expected = module(torch.from_numpy(x)).numpy()
        # What a Triton or KServe client sends: float32 values written as Python floats.
        oip = {"id": "1", "inputs": [{"name": input_name, "datatype": "FP32", "shape": [1, *row_shape]}]}
        oip["inputs"][0]["data"] = x.reshape(-1).tolist()
        m.json_body = out / f"{name}.json"
        m.json_body.write_bytes(json.dumps(oip).encode())
        header = {
            "id": "1",
            "inputs": [
                {
                    "name": input_name,
                    "datatype": "FP32",
                    "shape": [1, *row_shape],
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
        header_bytes = json.dumps(header).encode()
        m.binary_header_length = len(header_bytes)
        m.binary_body = out / f"{name}.bin"
        m.binary_body.write_bytes(header_bytes + x.tobytes())
        models[name] = m
    return models


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    command: list[str]
    path: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen = None
    log: Path = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def start(self) -> None:
        self.log = VAR / "logs" / f"{self.name}-{self.port}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        command = ["taskset", "-c", SERVER_CPU, *[str(c).replace("{port}", str(self.port)) for c in self.command]]
        with open(self.log, "wb") as log:
            # A session of its own: LitServe forks workers, and SIGSTOP/SIGCONT/SIGTERM must reach them all.
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **THREAD_ENV},
                start_new_session=True,
            )

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def cpu_seconds(self) -> float:
        """CPU time of every live process in the server's group: its cost per request, which
        unlike requests/s does not depend on how much of the core other tenants took."""
        ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == self.proc.pid:  # the process group
                ticks += int(fields[11]) + int(fields[12])  # utime + stime, threads included
        return ticks / CLOCK_TICKS

    def stop(self) -> None:
        if not self.proc:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait()
        # LitServe's workers can outlive their parent's SIGTERM handling.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wait_ready(server: Server, body: bytes, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise SystemExit(f"{server.name} exited with {server.proc.returncode}:\n{server.log.read_text()[-3000:]}")
        try:
            if post(server.url, body, {"Content-Type": "application/json"})[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{server.name} not ready after {timeout}s:\n{server.log.read_text()[-3000:]}")


def check_answer(contender: str, url: str, model: Model, binary: bool) -> None:
    """Every contender must compute the same thing before its speed means anything."""
    if binary:
        status, headers, body = post(
            url,
            model.binary_body.read_bytes(),
            {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(model.binary_header_length),
            },
        )
        length = int({k.lower(): v for k, v in headers.items()}["inference-header-content-length"])
        got = np.frombuffer(body[length:], dtype=np.float32)
    else:
        status, _, body = post(url, model.json_body.read_bytes(), {"Content-Type": "application/json"})
        got = np.asarray(json.loads(body)["outputs"][0]["data"], dtype=np.float32)
    # On a GPU, cuDNN's convolutions use TF32 by default: close, not equal, to the CPU's answer.
    rtol, atol = (1e-4, 1e-5) if DEVICE == "cpu" else (5e-3, 5e-3)
    if status != 200 or not np.allclose(got, model.expected.reshape(-1), rtol=rtol, atol=atol):
        raise SystemExit(f"{contender} on {model.name} answered {status} with wrong outputs: {body[:300]!r}")


def wrk(url: str, body: Path, concurrency: int, seconds: int, header_length: int | None = None) -> dict:
    env = {**os.environ, "BENCH_BODY": str(body)}
    if header_length is not None:
        env["BENCH_CONTENT_TYPE"] = "application/octet-stream"
        env["BENCH_HEADER_LENGTH"] = str(header_length)
    command = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s"]
    command += ["-s", str(HERE / "bench_runtime.lua"), url]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("BENCH_RESULT "))
    result = json.loads(line.removeprefix("BENCH_RESULT "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    for p in ("p50", "p95", "p99"):
        result[f"{p}_ms"] = result.pop(f"{p}_us") / 1000
    return result


def t_model(model: Model) -> float:
    command = ["taskset", "-c", SERVER_CPU, sys.executable, str(HERE / "bench_runtime_peers.py"), "model"]
    command += [str(model.path), str(MAX_BATCH), json.dumps(model.row_shape), "3"]
    out = subprocess.run(command, env={**os.environ, **THREAD_ENV}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["rows_per_s"]


def servers_for(model: Model) -> dict[str, Server]:
    peers = str(HERE / "bench_runtime_peers.py")
    ours = [sys.executable, "-m", "inference_runtime", "--model", model.path, "--name", model.name]
    ours += ["--signature", model.signature, "--host", "127.0.0.1", "--port", "{port}", "--num-threads", "1"]
    ours += ["--max-batch-size", MAX_BATCH, "--max-delay-ms", MAX_DELAY_MS, "--log-level", "warning"]
    ours += ["--device", DEVICE]
    return {
        "slipway": Server("slipway", ours, f"/v2/models/{model.name}/infer"),
        "litserve": Server(
            "litserve",
            [PEERS_PYTHON, HERE / "bench_runtime_litserve.py", "{port}", model.path, MAX_BATCH, MAX_DELAY_MS],
            "/predict",
        ),
        "fastapi": Server(
            "fastapi", [sys.executable, peers, "fastapi", "{port}", model.path], f"/v2/models/{model.name}/infer"
        ),
        "http": Server("http", [sys.executable, peers, "http", "{port}"], "/"),
    }


# contender → (server, binary body?)
CONTENDERS = {
    "slipway-json": ("slipway", False),
    "slipway-binary": ("slipway", True),
    "litserve": ("litserve", False),
    "fastapi": ("fastapi", False),
    "http": ("http", False),
}


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def run_round(model: Model, round_no: int, results: dict, loads: list[float]) -> None:
    servers = servers_for(model)
    try:
        for server in servers.values():
            server.start()
        json_body = model.json_body.read_bytes()
        for server in servers.values():
            wait_ready(server, json_body)
        for name, (server_name, binary) in CONTENDERS.items():
            if server_name != "http":
                check_answer(name, servers[server_name].url, model, binary)
        # Warm up every server (first-call profiling, allocator, connection setup), then
        # freeze them all: only the one measured may run.
        for server in servers.values():
            wrk(server.url, model.json_body, 16, 1)
            server.signal(signal.SIGSTOP)
        rows_per_s = t_model(model)
        results.setdefault((model.name, "model", MAX_BATCH), []).append({"rps": rows_per_s})
        print(f"  {model.name} round {round_no + 1}: T_model {rows_per_s:,.0f} rows/s at batch {MAX_BATCH}", flush=True)
        rng = random.Random(f"{model.name}-{round_no}")
        for concurrency in CONCURRENCY:
            order = [c for c in CONTENDERS if c != "http" or concurrency == CEILING_CONCURRENCY]
            rng.shuffle(order)
            for contender in order:
                server_name, binary = CONTENDERS[contender]
                server = servers[server_name]
                server.signal(signal.SIGCONT)
                body = model.binary_body if binary else model.json_body
                cpu = server.cpu_seconds()
                result = wrk(server.url, body, concurrency, DURATION_S, model.binary_header_length if binary else None)
                result["cpu_us"] = (server.cpu_seconds() - cpu) / max(result["requests"], 1) * 1e6
                server.signal(signal.SIGSTOP)
                loads.append(loadavg())
                if result["status_errors"] or result["socket_errors"]:
                    print(
                        f"  ! {contender} c={concurrency}: {result['status_errors']} non-2xx, "
                        f"{result['socket_errors']} socket errors"
                    )
                results.setdefault((model.name, contender, concurrency), []).append(result)
                print(
                    f"  {model.name} round {round_no + 1} c={concurrency:<2} {contender:<15} "
                    f"{result['rps']:8,.0f} req/s"
                    f"  p50 {result['p50_ms']:6.1f}  p95 {result['p95_ms']:6.1f}  p99 {result['p99_ms']:6.1f} ms"
                    f"  {result['cpu_us']:5.0f} µs CPU/req",
                    flush=True,
                )
    finally:
        for server in servers.values():
            server.stop()


def median_point(points: list[dict]) -> dict:
    keys = [k for k in ("rps", "p50_ms", "p95_ms", "p99_ms", "cpu_us") if k in points[0]]
    point = {k: statistics.median(p[k] for p in points) for k in keys}
    point["rounds"] = [round(p["rps"]) for p in points]
    point["errors"] = sum(p.get("status_errors", 0) + p.get("socket_errors", 0) for p in points)
    return point


def report(results: dict, loads: list[float], started: float) -> str:
    medians = {key: median_point(points) for key, points in results.items()}
    lines = []
    for model in MODELS:
        lines += [
            f"### {model}: requests/s and latency (ms), medians of {ROUNDS} interleaved rounds",
            "",
            "| contender | concurrency | req/s | p50 | p95 | p99 | server CPU µs/req | req/s per round |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for contender in CONTENDERS:
            for concurrency in CONCURRENCY:
                point = medians.get((model, contender, concurrency))
                if point is None:
                    continue
                label = "T_http (bare ASGI + JSON parse)" if contender == "http" else contender
                errors = f" (errors: {point['errors']})" if point["errors"] else ""
                lines.append(
                    f"| {label} | {concurrency} | {point['rps']:,.0f} | {point['p50_ms']:.1f} | {point['p95_ms']:.1f} "
                    f"| {point['p99_ms']:.1f} | {point['cpu_us']:.0f} | {', '.join(f'{r:,}' for r in point['rounds'])}"
                    f"{errors} |"
                )
        lines.append("")
    top = max(CONCURRENCY)
    lines += [
        f"### Goals at concurrency {top}",
        "",
        "| model | ours vs LitServe req/s (≥ 1.3) | p95 ours / LitServe (ms) | binary vs our JSON req/s (≥ 1.5) "
        "| T_http | T_model (rows/s, batch 16) | T_pred | served / T_pred (≥ 0.8) | same, in CPU µs/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for model in MODELS:
        ours = medians[(model, "slipway-json", top)]
        binary = medians[(model, "slipway-binary", top)]
        lit = medians[(model, "litserve", top)]
        http = medians[(model, "http", CEILING_CONCURRENCY)]
        t_http = http["rps"]
        t_model = medians[(model, "model", MAX_BATCH)]["rps"]
        t_pred = 1 / (1 / t_http + 1 / t_model)
        vs_lit = ours["rps"] / lit["rps"]
        vs_json = binary["rps"] / ours["rps"]
        efficiency = ours["rps"] / t_pred
        # The same ratio from CPU time per request, which other tenants of the core cannot skew.
        ceiling_cpu_us = http["cpu_us"] + 1e6 / t_model
        cpu_efficiency = ceiling_cpu_us / ours["cpu_us"]
        p95_ok = ours["p95_ms"] <= lit["p95_ms"]
        lines.append(
            f"| {model} | {vs_lit:.2f}x {'✓' if vs_lit >= 1.3 else '✗'} | {ours['p95_ms']:.1f} / {lit['p95_ms']:.1f} "
            f"{'✓' if p95_ok else '✗'} | {vs_json:.2f}x {'✓' if vs_json >= 1.5 else '✗'} "
            f"| {t_http:,.0f} | {t_model:,.0f} "
            f"| {t_pred:,.0f} | {efficiency:.2f} {'✓' if efficiency >= 0.8 else '✗'} "
            f"| {cpu_efficiency:.2f} ({ceiling_cpu_us:.0f} / {ours['cpu_us']:.0f}) |"
        )
        verdicts.append(vs_lit >= 1.3 and p95_ok and vs_json >= 1.5 and efficiency >= 0.8)
    minutes = (time.monotonic() - started) / 60
    lines += [
        "",
        f"Load average (1 min) while measuring: min {min(loads):.2f}, median {statistics.median(loads):.2f}, "
        f"max {max(loads):.2f}; {os.cpu_count()} cores; models on {device_name()}; "
        f"{ROUNDS} rounds of {DURATION_S} s points; "
        f"{minutes:.1f} min in all. Goals {'met' if all(verdicts) else 'NOT all met'}.",
    ]
    return "\n".join(lines)


def device_name() -> str:
    return f"the GPU ({torch.cuda.get_device_name(0)})" if DEVICE == "cuda" else "the CPU"


def main() -> int:
    started = time.monotonic()
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("BENCH_DEVICE=cuda, but torch sees no CUDA device")
    VAR.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    models = write_models()
    loads = [loadavg()]
    body_sizes = ", ".join(
        f"{m.name}: JSON {m.json_body.stat().st_size:,} B, binary {m.binary_body.stat().st_size:,} B"
        for m in models.values()
    )
    print(
        f"== bench-runtime: models on {device_name()}, servers on CPU {SERVER_CPU}, wrk on CPU {LOAD_CPU}, "
        "torch threads 1, "
        f"max batch {MAX_BATCH}, max delay {MAX_DELAY_MS} ms, {ROUNDS} rounds x {DURATION_S} s; bodies {body_sizes}; "
        f"load average {loads[0]:.2f}",
        flush=True,
    )
    results: dict = {}
    for round_no in range(ROUNDS):
        for model in models.values():
            run_round(model, round_no, results, loads)
    table = report(results, loads, started)
    print()
    print(table)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (OUT / f"runtime-{stamp}.md").write_text(table + "\n")
    raw = {f"{m}|{c}|{n}": points for (m, c, n), points in results.items()}
    (OUT / f"runtime-{stamp}.json").write_text(json.dumps({"loads": loads, "device": DEVICE, "results": raw}, indent=1))
    print(f"\n(written to {OUT}/runtime-{stamp}.md and .json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
