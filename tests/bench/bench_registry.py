"""`make bench`: the registry's benchmarks, each beside its reference, in one run.

1. A 1 GiB TorchScript upload through the API, on loopback, to Slipway served by
   gunicorn as `make run` serves it; throughput as a ratio to a sink that reads the
   same request and discards it, and the peak RSS of the worker that handled it.
2. 10,000 versions of one model: p50/p95 latency and query count of the versions
   list (API page and HTML page) beside MLflow's search_model_versions on SQLite,
   through its Python client and through its REST server.

The machines are shared and noisy: contenders run interleaved, in rounds whose
order rotates, and the table shows medians and ratios taken within each round.
The method and the latest numbers are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
# Where the benchmarks keep their files; the suite's smoke test points it elsewhere.
BENCH = Path(os.environ.get("SLIPWAY_BENCH_DIR") or ROOT / "var" / "bench").resolve()
MIB = 1024 * 1024
SIGNATURE = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}
MLFLOW_SPEC = os.environ.get("SLIPWAY_BENCH_MLFLOW", "mlflow==3.17.2")
USERNAME, PASSWORD = "bench", "bench-" + secrets.token_urlsafe(12)
UPLOAD_MODEL, LIST_MODEL = "big", "m"


def shown(path: Path) -> str:
    """A path as the reader knows it: from the repository when it lies there."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: a value that was measured, never an interpolation."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# --- Machine and cached inputs ---------------------------------------------------


def machine() -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        mem_kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kib / MIB, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def ensure_mlflow_venv() -> Path:
    venv = BENCH / "mlflow-venv"
    python = venv / "bin" / "python"
    marker = venv / "installed-spec"
    if python.exists() and marker.exists() and marker.read_text() == MLFLOW_SPEC:
        return python
    log(f"creating {shown(venv)} with {MLFLOW_SPEC} (once; a minute or two)")
    shutil.rmtree(venv, ignore_errors=True)
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", MLFLOW_SPEC])
    marker.write_text(MLFLOW_SPEC)
    return python


def ensure_model_file(size_mib: int) -> tuple[Path, str]:
    """A real TorchScript archive of about `size_mib` MiB (a tiny module with a big buffer)."""
    path = BENCH / f"model-{size_mib}mib.pt"
    digest_path = path.with_suffix(".sha256")
    if path.exists() and digest_path.exists():
        return path, digest_path.read_text().strip()
    log(f"writing a {size_mib} MiB TorchScript archive to {shown(path)} (once)")
    tmp = path.with_suffix(".partial")
    # In a child, so the 1 GiB tensor is not kept in this process.
    run([sys.executable, __file__, "--make-model", str(tmp), str(size_mib)])
    digest = hashlib.sha256()
    with tmp.open("rb") as fh:
        while chunk := fh.read(8 * MIB):
            digest.update(chunk)
    tmp.rename(path)
    digest_path.write_text(digest.hexdigest())
    return path, digest.hexdigest()


def make_model(path: str, size_mib: int) -> None:
    import torch

    class Padded(torch.nn.Module):
        def __init__(self, padding: int):
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)
            # Random bytes: nothing on the way can shortcut zeros.
            self.register_buffer("padding", torch.randint(0, 256, (padding,), dtype=torch.uint8))

        def forward(self, x):
            return self.linear(x)

    torch.manual_seed(0)
    # The archive's other members and zip framing come to a few KiB.
    torch.jit.save(torch.jit.script(Padded(size_mib * MIB - 16 * 1024).eval()), path)


def ensure_mlflow_db(python: Path, versions: int) -> Path:
    path = BENCH / f"mlflow-{versions}-versions.db"
    if not path.exists():
        log(f"creating MLflow's SQLite registry with {versions} versions of one model (once)")
        run([str(python), str(HERE / "bench_mlflow.py"), "prepare", str(path), str(versions)], stdout=sys.stderr)
    return path


# --- Slipway: database, fixtures, servers -----------------------------------------


def bench_database_url() -> str:
    explicit = os.environ.get("SLIPWAY_BENCH_DATABASE_URL")
    if explicit:
        return explicit
    base = os.environ.get("DATABASE_URL")
    if not base or not base.startswith(("postgres://", "postgresql://")):
        sys.exit("DATABASE_URL must point at PostgreSQL (.ci/bench.sh finds or starts one).")
    # The same server, a database of our own that every run drops and recreates.
    return urllib.parse.urlsplit(base)._replace(path="/slipway_bench").geturl()


def recreate_database(url: str) -> str:
    """Drop and create the bench database; returns the server's version."""
    import psycopg

    parts = urllib.parse.urlsplit(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
        return conn.execute("SHOW server_version").fetchone()[0].split()[0]


def slipway_env(database_url: str, var_dir: Path) -> dict[str, str]:
    # Only our settings: a developer's SLIPWAY_DEBUG or storage backend must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLIPWAY_", "DJANGO_", "CELERY_"))}
    env.update(
        DATABASE_URL=database_url,
        SLIPWAY_VAR_DIR=str(var_dir),
        DJANGO_SECRET_KEY="bench-" + secrets.token_urlsafe(40),
        DJANGO_SETTINGS_MODULE="controlplane.settings",
        PYTHONPATH=str(ROOT),
    )
    return env


@dataclass
class Fixtures:
    token: str
    queries: dict[str, int]
    count_versions: int


def prepare_slipway(env: dict[str, str], versions: int) -> Fixtures:
    """Migrate, then create the user, the token and the models, in this process."""
    manage = [sys.executable, str(ROOT / "manage.py")]
    run([*manage, "migrate", "--no-input", "-v0"], env=env, cwd=ROOT)
    # Production serves hashed static files; `make run` pages need them too.
    run([*manage, "collectstatic", "--no-input", "-v0"], env=env, cwd=ROOT)
    os.environ.clear()
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from controlplane.audit import Actor
    from controlplane.roles import grant_role
    from controlplane.tokens import create_token
    from registry import services
    from registry.models import Model, ModelVersion

    user = get_user_model().objects.create_user(USERNAME, password=PASSWORD, is_staff=True)
    # An admin in every environment (deleting a version between upload rounds needs it);
    # not a superuser, whose requests skip reading role bindings.
    grant_role(None, "admin", actor=Actor.system(), user=USERNAME)
    actor = Actor(user=user)
    token = create_token(user, "bench", actor=actor).raw
    services.create_model(UPLOAD_MODEL, "1 GiB uploads", actor=actor)
    model = services.create_model(LIST_MODEL, "many versions", actor=actor)
    # The list reads rows only: no artifact files behind them.
    rows = [
        ModelVersion(
            model=model,
            version=number,
            artifact=f"{LIST_MODEL}/{number:032x}.pt",
            filename="model.pt",
            size=1_000_000 + number,
            sha256=hashlib.sha256(str(number).encode()).hexdigest(),
            format="torchscript",
            status="ready",
            signature={**SIGNATURE, "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]},
            metadata={"git_commit": f"{number:040x}", "metrics": {"accuracy": 0.9}},
            parameter_count=67,
            load_time_ms=3.5,
            uploaded_by=user,
        )
        for number in range(1, versions + 1)
    ]
    ModelVersion.objects.bulk_create(rows, batch_size=2000)
    Model.objects.filter(pk=model.pk).update(latest_version=versions)
    with connection.cursor() as cursor:
        # What autovacuum does within a minute of these inserts; without statistics the
        # planner sorts every version to find the first page.
        cursor.execute("VACUUM ANALYZE")

    api = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {token}")
    browser = Client(HTTP_HOST="127.0.0.1")
    browser.force_login(user)
    queries = {}
    for name, client, path in (
        ("slipway-api", api, f"/api/v1/models/{LIST_MODEL}/versions/"),
        ("slipway-html", browser, f"/models/{LIST_MODEL}/"),
    ):
        client.get(path)  # warm: token last-used stamp, lazy imports
        with CaptureQueriesContext(connection) as captured:
            response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)
        queries[name] = len(captured.captured_queries)
    count = ModelVersion.objects.filter(model=model).count()
    connection.close()
    return Fixtures(token=token, queries=queries, count_versions=count)


class Server:
    """A child process serving HTTP on a port; stopped (with its children) on exit."""

    def __init__(self, name: str, cmd: list[str], port: int, env: dict[str, str], ready_path: str = "/", cwd=ROOT):
        self.name, self.port = name, port
        self.log_path = BENCH / "logs" / f"{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", ready_path)
                conn.getresponse().read()
                conn.close()
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer within 120 s; see {self.log_path}")
            time.sleep(0.2)

    def workers(self) -> list[int]:
        """The processes that serve requests: the pre-forked children, else the process itself."""
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.proc.pid:
                    children.append(int(stat.parent.name))
        return children or [self.proc.pid]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def gunicorn(name: str, app: list[str], env: dict[str, str], ready_path: str) -> Server:
    port = free_port()
    # The settings and flags of controlplane/devserver.py, which `make run` starts.
    cmd = [
        str(BIN / "gunicorn"),
        *app,
        "--config",
        str(ROOT / "controlplane" / "gunicorn.conf.py"),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--access-logfile",
        "-",
    ]
    # In var/bench/slipway: Celery's filesystem broker writes a control/ folder where it runs.
    return Server(name, cmd, port, env, ready_path, cwd=env["SLIPWAY_VAR_DIR"])


# --- /proc readings ----------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime, all threads


def status_kib(pid: int, key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


def reset_peak_rss(pid: int) -> bool:
    """Make VmHWM start again from the current RSS (Linux >= 4.0), so each round's peak is its own."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --- 1. Upload ------------------------------------------------------------------------


@dataclass
class Upload:
    contender: str
    seconds: float
    mib_s: float
    server_cpu_s: float
    peak_rss_mib: float
    rss_before_mib: float
    client_peak_rss_mib: float
    peak_is_lifetime: bool = False


def curl_upload(url: str, path: Path, headers: list[str]) -> tuple[int, float, int, bytes, float]:
    """Upload with `curl -F artifact=@file` (streams from disk); returns code, seconds, bytes, body, client RSS."""
    out = BENCH / "logs" / "curl-response"
    cmd = ["curl", "--silent", "--show-error", "--output", str(out), "-H", "Expect:"]
    for header in headers:
        cmd += ["-H", header]
    cmd += [
        "-F",
        f"artifact=@{path};type=application/octet-stream",
        "-F",
        f"signature={json.dumps(SIGNATURE)}",
        "--write-out",
        "%{http_code} %{time_total} %{size_upload}",
        url,
    ]
    with (BENCH / "logs" / "curl-out").open("w+b") as written:
        proc = subprocess.Popen(cmd, stdout=written)
        # Sampled, because the child's rusage would count the Python that forked it.
        client_peak_kib = 0
        while proc.poll() is None:
            with contextlib.suppress(OSError):
                client_peak_kib = max(client_peak_kib, status_kib(proc.pid, "VmHWM"))
            time.sleep(0.05)
        written.seek(0)
        summary = written.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"curl failed ({proc.returncode}) uploading to {url}")
    code, seconds, size = summary.split()
    return int(code), float(seconds), int(float(size)), out.read_bytes(), client_peak_kib / 1024


def measure_upload(name: str, server: Server, url: str, path: Path, headers: list[str]) -> tuple[Upload, bytes]:
    workers = server.workers()
    os.sync()  # the previous round's dirty pages are written back, not this round's problem
    reset = all(reset_peak_rss(pid) for pid in workers)
    before = {pid: (cpu_seconds(pid), status_kib(pid, "VmRSS")) for pid in workers}
    code, seconds, size, body, client_rss = curl_upload(url, path, headers)
    used = {pid: cpu_seconds(pid) - before[pid][0] for pid in workers}
    handler = max(used, key=used.get)  # the worker that did the work
    result = Upload(
        contender=name,
        seconds=seconds,
        mib_s=size / MIB / seconds,
        server_cpu_s=sum(used.values()),
        peak_rss_mib=status_kib(handler, "VmHWM") / 1024,
        rss_before_mib=before[handler][1] / 1024,
        client_peak_rss_mib=client_rss,
        peak_is_lifetime=not reset,
    )
    if code not in (200, 201):
        raise RuntimeError(f"{name}: HTTP {code}: {body[:500]!r}")
    return result, body


def bench_upload(servers: dict[str, Server], token: str, path: Path, digest: str, rounds: int) -> list[Upload]:
    auth = [f"Authorization: Bearer {token}"]
    slipway_url = f"http://127.0.0.1:{servers['slipway'].port}/api/v1/models/{UPLOAD_MODEL}/versions/"
    targets = {
        "raw-socket": (servers["raw"], f"http://127.0.0.1:{servers['raw'].port}/", []),
        "wsgi-sink": (servers["sink"], f"http://127.0.0.1:{servers['sink'].port}/", []),
        "slipway": (servers["slipway"], slipway_url, auth),
    }
    with path.open("rb") as fh:  # the client reads it from the page cache, as every round will
        while fh.read(8 * MIB):
            pass
    # Warm every Slipway worker (imports, database connection) with a small real upload.
    small = BENCH / "model-small.pt"
    if not small.exists():
        run([sys.executable, __file__, "--make-model", str(small), "1"])
    for _ in range(4):
        code, _, _, body, _ = curl_upload(slipway_url, small, auth)
        assert code == 201, body
        delete_version(servers["slipway"].port, token, json.loads(body)["version"])
    results = []
    order = list(targets)
    for number in range(rounds):
        for name in order[number % 3 :] + order[: number % 3]:
            server, url, headers = targets[name]
            result, body = measure_upload(name, server, url, path, headers)
            if name == "slipway":
                created = json.loads(body)
                assert created["sha256"] == digest, f"Slipway stored {created['sha256']}, the file is {digest}"
                assert created["size"] == path.stat().st_size
                delete_version(server.port, token, created["version"])  # 1 GiB a round adds up
            log(
                f"upload round {number + 1}/{rounds} {name:10} {result.mib_s:7.0f} MiB/s  "
                f"peak RSS {result.peak_rss_mib:5.1f} MiB  server CPU {result.server_cpu_s:4.2f} s"
            )
            results.append(result)
    return results


def delete_version(port: int, token: str, version: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(
        "DELETE",
        f"/api/v1/models/{UPLOAD_MODEL}/versions/{version}/",
        headers={"Authorization": f"Bearer {token}"},
    )
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 204, response.status


# --- 2. Versions list -------------------------------------------------------------


class HttpContender:
    """Sequential GETs on one keep-alive connection, timed from send to the last body byte.

    `cpu` returns the CPU seconds used so far by the processes that serve it: on a
    shared machine latency says how long a user waits, CPU per request how much work
    each contender does, whatever the neighbours are doing.
    """

    def __init__(self, port: int, path: str, headers: dict[str, str], check, cpu):
        self.port, self.path, self.headers, self.check, self.cpu = port, path, headers, check, cpu
        self.conn: http.client.HTTPConnection | None = None

    def get(self) -> float:
        start = time.perf_counter()
        self.conn.request("GET", self.path, headers=self.headers)
        response = self.conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"GET {self.path}: HTTP {response.status}: {body[:300]!r}")
        self.check(body)
        return elapsed

    def measure(self, n: int, warmup: int) -> tuple[list[float], float]:
        # A fresh connection each round: the server closed the idle one while others ran.
        if self.conn is not None:
            self.conn.close()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        for _ in range(warmup):
            self.get()
        cpu = self.cpu()
        seconds = [self.get() for _ in range(n)]
        return seconds, self.cpu() - cpu


class MlflowClientContender:
    def __init__(self, helper: subprocess.Popen):
        self.helper = helper

    def ask(self, request: dict) -> dict:
        self.helper.stdin.write(json.dumps(request) + "\n")
        self.helper.stdin.flush()
        line = self.helper.stdout.readline()
        if not line:
            raise RuntimeError("the MLflow helper died; see var/bench/logs/mlflow-client.log")
        return json.loads(line)

    def measure(self, n: int, warmup: int) -> tuple[list[float], float]:
        self.ask({"cmd": "search", "n": warmup})
        answer = self.ask({"cmd": "search", "n": n})
        return answer["seconds"], answer["cpu_seconds"]


def descendants(root: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def total_cpu(pids) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


class PostgresBackends:
    """CPU of the PostgreSQL backends serving the bench database, when the server is local."""

    def __init__(self, url: str):
        import psycopg

        parts = urllib.parse.urlsplit(url)
        self.local = parts.hostname in ("127.0.0.1", "localhost", "::1")
        self.database = parts.path.lstrip("/")
        self.conn = psycopg.connect(url, autocommit=True) if self.local else None

    def cpu(self) -> float:
        if self.conn is None:
            return 0.0
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [self.database]
        ).fetchall()
        return total_cpu(pid for (pid,) in rows)


def login(port: int) -> str:
    """A browser session: the login form with its CSRF token, like a person would."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/login/")
    response = conn.getresponse()
    page = response.read().decode()
    cookies = SimpleCookie(response.getheader("Set-Cookie"))
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"username": USERNAME, "password": PASSWORD, "csrfmiddlewaretoken": csrf})
    conn.request(
        "POST",
        "/login/",
        body=form,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"csrftoken={cookies['csrftoken'].value}",
        },
    )
    response = conn.getresponse()
    response.read()
    cookies.load(response.getheader("Set-Cookie") or "")
    conn.close()
    if response.status != 302 or "sessionid" not in cookies:
        raise RuntimeError(f"login failed: HTTP {response.status}")
    return f"sessionid={cookies['sessionid'].value}; csrftoken={cookies['csrftoken'].value}"


def bench_list(
    slipway: Server,
    mlflow_rest: Server,
    helper: subprocess.Popen,
    token: str,
    versions: int,
    database_url: str,
    rounds: int,
    per_round: int,
) -> tuple[dict[str, list[list[float]]], dict[str, list[float]]]:
    def api_check(body: bytes) -> None:
        page = json.loads(body)
        assert page["count"] == versions and len(page["results"]) == 50, (page["count"], len(page["results"]))
        assert page["results"][0]["version"] == versions

    def html_check(body: bytes) -> None:
        assert f">v{versions}<".encode() in body and body.count(b"<tr>") >= 50

    def rest_check(body: bytes) -> None:
        assert len(json.loads(body)["model_versions"]) == 50

    postgres = PostgresBackends(database_url)

    def slipway_cpu() -> float:  # the gunicorn workers and their database backends
        return total_cpu(slipway.workers()) + postgres.cpu()

    def mlflow_cpu() -> float:  # its server's workers (SQLite works inside them)
        return total_cpu(descendants(mlflow_rest.proc.pid))

    search = urllib.parse.urlencode({"filter": f"name='{LIST_MODEL}'", "max_results": 50})
    contenders = {
        "slipway-api": HttpContender(
            slipway.port,
            f"/api/v1/models/{LIST_MODEL}/versions/",
            {"Authorization": f"Bearer {token}", "Accept": "application/json"},
            api_check,
            slipway_cpu,
        ),
        "slipway-html": HttpContender(
            slipway.port, f"/models/{LIST_MODEL}/", {"Cookie": login(slipway.port)}, html_check, slipway_cpu
        ),
        "mlflow-client": MlflowClientContender(helper),
        "mlflow-rest": HttpContender(
            mlflow_rest.port,
            f"/api/2.0/mlflow/model-versions/search?{search}",
            {"Accept": "application/json"},
            rest_check,
            mlflow_cpu,
        ),
    }
    for _ in range(4):  # first calls (imports, connections, caches), on each of MLflow's 4 workers too
        for contender in contenders.values():
            contender.measure(10, 0)
    samples: dict[str, list[list[float]]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    for number in range(rounds):
        for name in order[number % len(order) :] + order[: number % len(order)]:
            seconds, cpu_seconds = contenders[name].measure(per_round, warmup=5)
            samples[name].append(seconds)
            cpu[name].append(cpu_seconds / per_round)
            log(
                f"list round {number + 1}/{rounds} {name:13} p50 {percentile(seconds, 0.5) * 1000:6.1f} ms  "
                f"p95 {percentile(seconds, 0.95) * 1000:6.1f} ms  CPU {cpu_seconds / per_round * 1000:5.1f} ms/request"
            )
    if postgres.conn is not None:
        postgres.conn.close()
    return samples, cpu


# --- Report ------------------------------------------------------------------------


@dataclass
class Report:
    machine: dict
    upload_bytes: int = 0
    uploads: list[Upload] = field(default_factory=list)
    lists: dict[str, list[list[float]]] = field(default_factory=dict)
    list_cpu: dict[str, list[float]] = field(default_factory=dict)
    queries: dict[str, int | None] = field(default_factory=dict)
    versions: int = 0
    mlflow_version: str = ""


def _median(values):
    return statistics.median(values) if values else float("nan")


def summarize_upload(report: Report) -> tuple[list[str], dict]:
    by = {name: [u for u in report.uploads if u.contender == name] for name in ("raw-socket", "wsgi-sink", "slipway")}

    def ratio(name: str, reference: str) -> float:
        # Within a round: contenders that ran minutes apart saw different machines.
        return _median([a.mib_s / b.mib_s for a, b in zip(by[name], by[reference], strict=True)])

    ratio_sink, ratio_raw = ratio("slipway", "wsgi-sink"), ratio("slipway", "raw-socket")
    peak = max(u.peak_rss_mib for u in by["slipway"])
    growth = max(u.peak_rss_mib - u.rss_before_mib for u in by["slipway"])
    labels = {
        "raw-socket": "raw socket reader (no HTTP framework)",
        "wsgi-sink": "WSGI sink, gunicorn with make run's flags",
        "slipway": "Slipway POST /api/v1/models/big/versions/",
    }
    lines = [
        f"1. Upload of a {report.upload_bytes / MIB:.0f} MiB TorchScript archive, curl -F from disk, loopback; "
        f"{len(by['slipway'])} interleaved rounds, medians",
        f"   {'contender':42} {'MiB/s':>6} {'x sink':>7} {'worker peak RSS':>16} {'upload added':>13}"
        f" {'server CPU':>11} {'client RSS':>11}",
    ]
    for name, label in labels.items():
        rows = by[name]
        lines.append(
            f"   {label:42} {_median([u.mib_s for u in rows]):6.0f} {ratio(name, 'wsgi-sink'):7.2f}"
            f" {_median([u.peak_rss_mib for u in rows]):12.1f} MiB"
            f" {_median([u.peak_rss_mib - u.rss_before_mib for u in rows]):9.1f} MiB"
            f" {_median([u.server_cpu_s for u in rows]):9.2f} s"
            f" {_median([u.client_peak_rss_mib for u in rows]):7.1f} MiB"
        )
    met_speed, met_rss = ratio_sink >= 0.8, peak <= 64
    lines.append(
        f"   goal >= 0.80x the sink: {'MET' if met_speed else 'MISSED'} "
        f"({ratio_sink:.2f}x the WSGI sink, {ratio_raw:.2f}x the raw socket)"
    )
    lines.append(
        f"   goal peak RSS <= 64 MiB: {'MET' if met_rss else 'MISSED'} (highest worker peak {peak:.1f} MiB, "
        f"of which the upload added at most {growth:.1f} MiB)"
    )
    summary = {
        "ratio_to_sink": ratio_sink,
        "ratio_to_raw": ratio_raw,
        "peak_rss_mib": peak,
        "rss_growth_mib": growth,
        "goal_speed_met": met_speed,
        "goal_rss_met": met_rss,
        "peak_is_lifetime": any(u.peak_is_lifetime for u in by["slipway"]),
    }
    return lines, summary


def summarize_list(report: Report) -> tuple[list[str], dict]:
    samples = report.lists
    rounds = len(samples["slipway-api"])
    per_round = len(samples["slipway-api"][0])
    labels = {
        "slipway-api": "Slipway API GET /api/v1/models/m/versions/",
        "slipway-html": "Slipway HTML GET /models/m/ (session)",
        "mlflow-client": "MLflow client search_model_versions(50)",
        "mlflow-rest": "MLflow REST GET model-versions/search",
    }

    def p95_ratio(name: str, reference: str) -> float:
        return _median(
            [percentile(a, 0.95) / percentile(b, 0.95) for a, b in zip(samples[name], samples[reference], strict=True)]
        )

    lines = [
        f"2. First page (50) of {report.versions} versions of one model; {rounds} interleaved rounds x {per_round} "
        f"sequential requests after warm-up (MLflow {report.mlflow_version}, SQLite)",
        f"   {'contender':44} {'p50 ms':>7} {'p95 ms':>7} {'p95/client':>11} {'p95/REST':>9}"
        f" {'queries':>8} {'server CPU':>11}",
    ]
    for name, label in labels.items():
        pooled = [s for chunk in samples[name] for s in chunk]
        queries = report.queries.get(name)
        lines.append(
            f"   {label:44} {percentile(pooled, 0.5) * 1000:7.1f} {percentile(pooled, 0.95) * 1000:7.1f}"
            f" {p95_ratio(name, 'mlflow-client'):11.2f} {p95_ratio(name, 'mlflow-rest'):9.2f}"
            f" {queries if queries is not None else '-':>8} {_median(report.list_cpu[name]) * 1000:6.1f} ms"
        )
    summary = {
        name: {"p95_vs_client": p95_ratio(name, "mlflow-client"), "p95_vs_rest": p95_ratio(name, "mlflow-rest")}
        for name in ("slipway-api", "slipway-html")
    }
    for name in ("slipway-api", "slipway-html"):
        met = summary[name]["p95_vs_client"] <= 0.5
        summary[name]["goal_met"] = met
        lines.append(
            f"   goal {labels[name].split(' GET')[0]} p95 <= 0.5x MLflow's client: {'MET' if met else 'MISSED'}"
            f" ({summary[name]['p95_vs_client']:.2f}x; {summary[name]['p95_vs_rest']:.2f}x its REST server)"
        )
    return lines, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["upload", "list"], help="run one of the two benchmarks")
    parser.add_argument("--upload-mib", type=int, default=1024)
    parser.add_argument("--upload-rounds", type=int, default=7)
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--list-rounds", type=int, default=4)
    parser.add_argument("--requests-per-round", type=int, default=50)
    parser.add_argument("--make-model", nargs=2, metavar=("PATH", "MIB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_model:
        make_model(args.make_model[0], int(args.make_model[1]))
        return 0

    started = time.monotonic()
    BENCH.mkdir(parents=True, exist_ok=True)
    report = Report(machine=machine(), versions=args.versions)
    do_upload, do_list = args.only in (None, "upload"), args.only in (None, "list")
    if shutil.which("curl") is None:
        sys.exit("curl is needed for the upload benchmark (.ci/bench.sh installs it).")
    mlflow_python = ensure_mlflow_venv() if do_list else None
    mlflow_db = ensure_mlflow_db(mlflow_python, args.versions) if do_list else None
    model_path, digest = ensure_model_file(args.upload_mib) if do_upload else (None, "")

    var_dir = BENCH / "slipway"
    shutil.rmtree(var_dir, ignore_errors=True)
    for folder in ("celery/queue", "celery/processed"):  # the filesystem broker's, as `make run` has
        (var_dir / folder).mkdir(parents=True)
    database_url = bench_database_url()
    log(f"database {urllib.parse.urlsplit(database_url)._replace(netloc='…').geturl()} (dropped and recreated)")
    report.machine["postgresql"] = recreate_database(database_url)
    env = slipway_env(database_url, var_dir)
    fixtures = prepare_slipway(env, args.versions)
    report.queries.update(fixtures.queries)

    servers: dict[str, Server] = {}
    helper = None
    stack = contextlib.ExitStack()
    try:
        log("starting Slipway under gunicorn")
        servers["slipway"] = gunicorn("slipway", ["controlplane.wsgi"], env, "/healthz")
        if do_upload:
            report.upload_bytes = model_path.stat().st_size
            servers["sink"] = gunicorn("wsgi-sink", ["--pythonpath", str(HERE), "bench_sink"], env, "/")
            raw_port = free_port()
            servers["raw"] = Server(
                "raw-socket", [sys.executable, str(HERE / "bench_sink.py"), str(raw_port)], raw_port, env
            )
            report.uploads = bench_upload(servers, fixtures.token, model_path, digest, args.upload_rounds)
            for name in ("sink", "raw"):
                servers.pop(name).stop()
        if do_list:
            mlflow_port = free_port()
            # Its own defaults: none of our variables, nor an MLFLOW_TRACKING_URI of the developer.
            mlflow_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHONPATH"))}
            log("starting MLflow's server and client")
            servers["mlflow"] = Server(
                "mlflow-rest",
                [
                    str(mlflow_python.parent / "mlflow"),
                    "server",
                    "--backend-store-uri",
                    f"sqlite:///{mlflow_db}",
                    "--default-artifact-root",
                    str(BENCH / "mlflow-artifacts"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(mlflow_port),
                ],
                mlflow_port,
                mlflow_env,
                "/health",
                cwd=BENCH,  # it makes an mlartifacts/ folder where it runs
            )
            helper_log = stack.enter_context((BENCH / "logs" / "mlflow-client.log").open("w"))
            helper = subprocess.Popen(
                [str(mlflow_python), str(HERE / "bench_mlflow.py"), "serve", str(mlflow_db)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=helper_log,
                text=True,
                env=mlflow_env,
            )
            client = MlflowClientContender(helper)
            hello = json.loads(helper.stdout.readline() or "{}")
            report.mlflow_version = hello.get("mlflow", "?")
            report.queries["mlflow-client"] = client.ask({"cmd": "queries"})["queries"]
            report.lists, report.list_cpu = bench_list(
                servers["slipway"],
                servers["mlflow"],
                helper,
                fixtures.token,
                fixtures.count_versions,
                database_url,
                args.list_rounds,
                args.requests_per_round,
            )
    finally:
        if helper is not None:
            with contextlib.suppress(OSError, ValueError):
                helper.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                helper.stdin.close()
            helper.wait(timeout=30)
        for server in servers.values():
            server.stop()
        stack.close()

    report.machine["loadavg_end"] = os.getloadavg()
    m = report.machine
    print()
    print(f"Slipway registry benchmarks, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(
        f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}, "
        f"PostgreSQL {m['postgresql']}; load average {m['loadavg_start'][0]:.2f} at start, "
        f"{m['loadavg_end'][0]:.2f} at end (other work on the machine shows here)"
    )
    summary = {"machine": m}
    if report.uploads:
        lines, summary["upload"] = summarize_upload(report)
        print("\n".join(["", *lines]))
    if report.lists:
        lines, summary["list"] = summarize_list(report)
        summary["queries"] = report.queries
        print("\n".join(["", *lines]))
    print(f"\n({time.monotonic() - started:.0f} s; raw samples in {shown(BENCH / 'results.json')})")
    raw = {"uploads": [u.__dict__ for u in report.uploads], "lists": report.lists}
    (BENCH / "results.json").write_text(json.dumps({"summary": summary, "raw": raw}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
