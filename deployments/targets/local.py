"""The `local` target: releases run as runtime processes on this machine (the embedded default).

Every replica is `python -m inference_runtime` started in its own session, so it
outlives the worker that started it; a router process (deployments/targets/router.py)
gives each deployment one stable port and splits traffic between releases by exact
weight. Nothing is kept in memory: the state lives in files under
VAR_DIR/deployments/<key>/, so a fresh LocalTarget (a restarted worker, the web
process) sees the same processes:

    port                   the stable port, allocated once, kept until teardown
    routes.json            what the router serves: weight and ready replicas per release
    router.json, .log      the router's pid and start time, and its log
    release-N/release.json the desired replica count
    release-N/replica-I.json, .log   pid, start time, port, exits, since when ready; the runtime's log

Logs are kept under SLIPWAY_LOCAL_LOG_MAX_BYTES: a longer one is moved to `<name>.log.1`
(one old copy) when its process starts, or copied there and emptied in place while it runs
(children append, so they go on writing at the start of the emptied file).

A pid is only trusted with the start time read from /proc/<pid>/stat when it was
started, so a pid reused by another program is never mistaken for a replica.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from deployments.targets.base import (
    DeploymentRef,
    ReleaseSpec,
    ReleaseStatus,
    ReplicaStatus,
    TargetError,
    TargetStatus,
)

ROOT = Path(__file__).resolve().parents[2]  # `python -m` finds inference_runtime and deployments from here
REPLICA_HOST = "127.0.0.1"  # replicas are reached through the router only
PROBE_TIMEOUT_S = 0.5  # status() is polled every ~0.5 s: a hung replica must not hold it up
METRICS_TIMEOUT_S = 2.0
STOP_GRACE_S = 10.0  # SIGTERM lets the runtime drain (for a little less: --drain-timeout-s); then SIGKILL
ROUTER_START_TIMEOUT_S = 15.0
MAX_RESTARTS = 3  # a replica that exited more often than this is not started again...
# ...counting from when it was last seen ready for SLIPWAY_LOCAL_RESTART_RESET_S (a crash loop never is).
# How the runtime (serve.py) and uvicorn say that the replica's port was taken: not the model's fault.
PORT_TAKEN = ("could not listen on", "address already in use")
MARKER = "--- slipway:"  # starts each run's part of a log: the reason for an exit is read after the last one
KEY_RE = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
# What a child process may see of the worker's environment: never database URLs or secrets.
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONPATH", "LD_LIBRARY_PATH")
PASSED_ENV_PREFIXES = ("CUDA_", "NVIDIA_", "OMP_", "MKL_", "RUNTIME_")

# Processes this worker started. Popen.poll() reaps them and remembers the exit code;
# a dropped Popen would be reaped by the subprocess module and its exit code lost.
_CHILDREN: dict[int, subprocess.Popen] = {}


class LocalTarget:
    """Runtime processes on this machine behind a weighted router; see the module docstring."""

    # --- Target interface --------------------------------------------------------------
    def exact_weights(self, deployment: DeploymentRef) -> bool:
        return True

    def apply(self, deployment: DeploymentRef, release: ReleaseSpec, replicas: int) -> None:
        if replicas < 0:
            raise TargetError(f"release {release.number}: replicas must be 0 or more, not {replicas}")
        paths = _paths(deployment)
        paths.release(release.number).mkdir(parents=True, exist_ok=True)
        with _locked(paths.lock):
            _write_json(paths.release(release.number) / "release.json", {"number": release.number, "desired": replicas})
            current = _replicas(paths, release.number)
            extras = [r for r in current if r.index >= replicas]
            if extras:
                # Out of the router first, so no new request reaches a replica that drains.
                _await_router(paths, self._sync_routes(paths, drop={r.url for r in extras}))
                _stop([r.process for r in extras if r.alive])
                for replica in extras:
                    _CHILDREN.pop(replica.pid, None)
                    replica.path.unlink(missing_ok=True)
            by_index = {r.index: r for r in current}
            for index in range(replicas):
                replica = by_index.get(index)
                if replica is None:
                    _start_replica(paths, release, index, None)
                elif not replica.alive and replica.pid is not None:
                    self._restart_or_give_up(paths, release, replica)
            generation = self._sync_routes(paths)
            if _read_port(paths) is not None:  # routed before: its router must run (it may have died)
                _ensure_router(paths, generation, wait=False)

    def route(self, deployment: DeploymentRef, weights: dict[int, int]) -> str:
        if any(w < 0 for w in weights.values()) or sum(weights.values()) != 100:
            raise TargetError(f"weights must be 0 or more and sum to 100, not {weights}")
        paths = _paths(deployment)
        paths.root.mkdir(parents=True, exist_ok=True)
        with _locked(paths.lock):
            generation = self._sync_routes(paths, weights={int(n): int(w) for n, w in weights.items()})
            port = _ensure_router(paths, generation, wait=True)
        return _endpoint(port)

    def status(self, deployment: DeploymentRef) -> TargetStatus:
        paths = _paths(deployment)
        if not paths.root.is_dir():
            return TargetStatus(endpoint=None, weights={}, releases={})
        routes = _read_json(paths.routes) or {}
        releases = {n: _replicas(paths, n) for n in _release_numbers(paths)}
        ready = _probe_ready(r for group in releases.values() for r in group)
        router = _read_json(paths.router)
        router_runs = router is not None and _is_running(router["pid"], router["start_time"])
        # The router serves ready replicas only: bring it up to date as replicas come and go.
        served = {n: entry.get("backends", []) for n, entry in _routes_releases(routes).items()}
        stale = any(served.get(n, []) != _ready_urls(group, ready) for n, group in releases.items())
        notes = _readiness_notes([r for group in releases.values() for r in group], ready)
        running_logs = [r.log_path for group in releases.values() for r in group if r.alive]
        long_logs = [log for log in [*running_logs, *([paths.router_log] if router_runs else [])] if _too_long(log)]
        if stale or notes or long_logs:
            with _locked(paths.lock, blocking=False) as got:
                if got:  # else apply/route/remove holds it (and rewrites the routes itself); the next look does it
                    for replica, fields in notes:
                        _update_replica(replica, fields)
                    for log in long_logs:
                        _trim_log(log)
                    if stale:
                        self._sync_routes(paths, ready=ready)
        statuses = {n: _release_status(paths, n, group, ready) for n, group in releases.items()}
        port = _read_port(paths)
        endpoint = _endpoint(port) if router_runs and port is not None else None
        weights = {n: entry.get("weight", 0) for n, entry in _routes_releases(routes).items()}
        return TargetStatus(endpoint=endpoint, weights=weights, releases=statuses)

    def metrics(self, deployment: DeploymentRef, release: int) -> list[str]:
        alive = [r for r in _replicas(_paths(deployment), release) if r.alive]

        def scrape(replica: _Replica) -> str | None:
            if _get(replica.port, "/v2/health/ready", PROBE_TIMEOUT_S)[0] != 200:
                return None
            status, body = _get(replica.port, "/metrics", METRICS_TIMEOUT_S)
            return body.decode("utf-8", "replace") if status == 200 else None

        return [text for text in _concurrently(scrape, alive) if text is not None]

    def remove(self, deployment: DeploymentRef, release: int) -> None:
        paths = _paths(deployment)
        if not paths.root.is_dir():
            return
        with _locked(paths.lock):
            replicas = _replicas(paths, release)
            _await_router(paths, self._sync_routes(paths, remove=release))
            _stop([r.process for r in replicas if r.alive])
            for replica in replicas:
                _CHILDREN.pop(replica.pid, None)
            shutil.rmtree(paths.release(release), ignore_errors=True)

    def teardown(self, deployment: DeploymentRef) -> None:
        paths = _paths(deployment)
        if not paths.root.is_dir():
            return
        with _locked(paths.lock):
            everything = [r for n in _release_numbers(paths) for r in _replicas(paths, n)]
            router = _read_json(paths.router)
            processes = [r.process for r in everything if r.alive]
            if router is not None and _is_running(router["pid"], router["start_time"]):
                processes.append(_Process(router["pid"], router["start_time"]))
            _stop(processes)
            for process in processes:
                _CHILDREN.pop(process.pid, None)
            # Under the ports lock: the port is free for another deployment once the directory is gone.
            with _locked(_deployments_dir() / "ports.lock"):
                shutil.rmtree(paths.root, ignore_errors=True)

    # --- internals ---------------------------------------------------------------------
    def _restart_or_give_up(self, paths: _Paths, release: ReleaseSpec, replica: _Replica) -> None:
        """Count the exit once; start the replica again unless it is refused or crash-looping."""
        ended = replica.exit()
        _CHILDREN.pop(replica.pid, None)
        if ended.terminal:
            _write_json(replica.path, {**replica.state, "pid": None, **ended.as_state()})
            return
        _start_replica(paths, release, replica.index, ended)

    def _sync_routes(
        self,
        paths: _Paths,
        *,
        weights: dict[int, int] | None = None,
        remove: int | None = None,
        drop: set[str] = frozenset(),
        ready: dict[str, bool] | None = None,
    ) -> str:
        """Rewrite routes.json (caller holds the lock): weights as given or kept, ready replicas now."""
        old = _routes_releases(_read_json(paths.routes) or {})
        if weights is None:
            weights = {n: int(entry.get("weight", 0)) for n, entry in old.items()}
        weights = {n: w for n, w in weights.items() if n != remove}
        releases = {n: _replicas(paths, n) for n in _release_numbers(paths) if n != remove}
        if ready is None:
            ready = _probe_ready(r for group in releases.values() for r in group if r.url not in drop)
        entries = {
            str(n): {"weight": weights.get(n, 0), "backends": _ready_urls(releases.get(n, []), ready)}
            for n in sorted(set(weights) | set(releases))
        }
        generation = uuid.uuid4().hex[:12]
        _write_json(paths.routes, {"deployment": paths.key, "generation": generation, "releases": entries})
        return generation


# --- files and paths -------------------------------------------------------------------
def _deployments_dir() -> Path:
    path = Path(settings.VAR_DIR) / "deployments"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class _Paths:
    key: str
    root: Path

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def port(self) -> Path:
        return self.root / "port"

    @property
    def routes(self) -> Path:
        return self.root / "routes.json"

    @property
    def router(self) -> Path:
        return self.root / "router.json"

    @property
    def router_log(self) -> Path:
        return self.root / "router.log"

    def release(self, number: int) -> Path:
        return self.root / f"release-{number}"


def _paths(deployment: DeploymentRef) -> _Paths:
    if not KEY_RE.fullmatch(deployment.key):
        raise TargetError(f"deployment key {deployment.key!r} is not a DNS-1035 label (a-z, 0-9, '-')")
    return _Paths(deployment.key, _deployments_dir() / deployment.key)


def _release_numbers(paths: _Paths) -> list[int]:
    numbers = []
    for path in paths.root.glob("release-*/release.json"):
        with contextlib.suppress(ValueError):
            numbers.append(int(path.parent.name.removeprefix("release-")))
    return sorted(numbers)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_json(path: Path, value: Any) -> None:
    """Atomically: a reader (the router, another worker) sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(value, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """An exclusive flock on `path`; yields False at once when not `blocking` and it is taken (or gone)."""
    try:
        fh = open(path, "a")  # noqa: SIM115 - closed below, after the lock is released
    except FileNotFoundError:
        if blocking:
            raise
        yield False
        return
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _routes_releases(routes: dict) -> dict[int, dict]:
    return {int(n): entry for n, entry in (routes.get("releases") or {}).items()}


# --- processes ---------------------------------------------------------------------------
def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot) while it runs; None once it exited."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    if fields[0] in ("Z", "X"):  # exited, not yet reaped
        return None
    return int(fields[19])


def _is_running(pid: int | None, start_time: int | None) -> bool:
    if pid is None:
        return False
    child = _CHILDREN.get(pid)
    if child is not None:
        child.poll()  # reaps it if it exited, keeping the code
    return start_time is not None and _start_time(pid) == start_time


def _exit_code(pid: int) -> int | None:
    """The exit code of a process this worker started and that exited; None for others."""
    child = _CHILDREN.get(pid)
    if child is None:
        return None
    try:
        # A zombie leader is only reapable once its other threads are gone too: moments, at most.
        return child.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        return None


@dataclass(frozen=True)
class _Process:
    pid: int
    start_time: int | None


def _stop(processes: list[_Process]) -> None:
    """SIGTERM to each process group (the runtime drains), SIGKILL after STOP_GRACE_S."""
    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        running = [p for p in processes if _is_running(p.pid, p.start_time)]
        for process in running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, sig)  # started as a session leader: its group is its pid
        deadline = time.monotonic() + wait_s
        while running and time.monotonic() < deadline:
            time.sleep(0.05)
            running = [p for p in running if _is_running(p.pid, p.start_time)]
        if not running:
            return
    raise TargetError(
        f"process(es) {', '.join(str(p.pid) for p in running)} did not stop even after SIGKILL: "
        "check them with ps and try again"
    )


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in PASSED_ENV or k.startswith(PASSED_ENV_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _spawn(command: list[str], log_path: Path, banner: str) -> tuple[int, int | None]:
    """Start `command` detached (own session, no stdin, output to `log_path`); its pid and start time."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if _too_long(log_path):  # nothing writes it now: its process exited (and its last words were read)
        os.replace(log_path, _old_log(log_path))
    with open(log_path, "ab") as log:
        log.write(f"{MARKER} {banner} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C or a stopping worker's group signal does not reach it
            close_fds=True,  # nor does it hold our lock files
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid, _start_time(proc.pid)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((REPLICA_HOST, 0))
        return sock.getsockname()[1]


# --- replicas ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Exit:
    """How a replica's process ended, and how often it has."""

    count: int  # exits that count towards MAX_RESTARTS, this one included (reset after a healthy run)
    code: int | None  # None: not our child (started before a worker restart), so its code is lost
    reason: str  # the log line that says why
    refused: bool  # the runtime refused the model: starting it again cannot help
    total: int = 0  # every exit of this replica, this one included: the restarts the status shows

    @property
    def terminal(self) -> bool:
        return self.refused or self.count > MAX_RESTARTS

    @property
    def summary(self) -> str:
        if self.code is None:
            how = "exit code unknown"
        elif self.code < 0:
            how = f"killed by {signal.Signals(-self.code).name}"
        else:
            how = f"code {self.code}"
        return f"exited {'1 time' if self.count == 1 else f'{self.count} times'} ({how}): {self.reason}"

    def as_state(self) -> dict:
        return {
            "exits": self.count,
            "exits_total": max(self.total, self.count),
            "last_code": self.code,
            "last_reason": self.reason,
            "refused": self.refused,
        }

    @classmethod
    def from_state(cls, state: dict) -> _Exit | None:
        if not state.get("exits"):
            return None
        return cls(
            state["exits"],
            state.get("last_code"),
            state.get("last_reason", ""),
            state.get("refused", False),
            _exits_total(state),
        )


def _exits_total(state: dict) -> int:
    return state.get("exits_total", state.get("exits", 0))  # a state written before exits could reset


@dataclass
class _Replica:
    path: Path
    state: dict
    alive: bool

    @property
    def index(self) -> int:
        return self.state["index"]

    @property
    def pid(self) -> int | None:
        return self.state.get("pid")

    @property
    def start_time(self) -> int | None:
        return self.state.get("start_time")

    @property
    def process(self) -> _Process:
        return _Process(self.pid, self.start_time)

    @property
    def port(self) -> int:
        return self.state["port"]

    @property
    def url(self) -> str:
        return f"http://{REPLICA_HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.path.with_suffix(".log")

    def exit(self) -> _Exit:
        """What ended the current process (call only when it is not alive)."""
        if self.pid is None:  # already counted: apply() gave up on this replica
            return _Exit.from_state(self.state) or _Exit(0, None, "stopped", True)
        code = _exit_code(self.pid)
        reason = _last_words(self.log_path)
        # The runtime exits 2 after "refusing to start: ..." and also when its port was taken between
        # _free_port() and its bind ("refusing to start: could not listen on ..."): a retry on a fresh port fixes that.
        port_taken = any(words in reason for words in PORT_TAKEN)
        refused = not port_taken and ("refusing to start" in reason or code == 2)
        return _Exit(self.state.get("exits", 0) + 1, code, reason, refused, _exits_total(self.state) + 1)


def _replicas(paths: _Paths, release: int) -> list[_Replica]:
    found = []
    for path in sorted(paths.release(release).glob("replica-*.json")):
        state = _read_json(path)
        if state is not None:
            found.append(_Replica(path, state, _is_running(state.get("pid"), state.get("start_time"))))
    return sorted(found, key=lambda r: r.index)


def _readiness_notes(replicas: list[_Replica], ready: dict[str, bool]) -> list[tuple[_Replica, dict]]:
    """What to write down about running replicas: since when each is ready, and whose exits count afresh.

    As Kubernetes resets a container's back-off once it has run for 10 minutes, a replica seen
    ready for SLIPWAY_LOCAL_RESTART_RESET_S (and not seen unready meanwhile) forgets its earlier
    exits, so one killed once a week is not given up on the 4th; a replica that dies before it
    has been ready that long keeps counting, so a crash loop still stops at MAX_RESTARTS.
    """
    now = time.time()
    reset_after = float(settings.SLIPWAY_LOCAL_RESTART_RESET_S)
    notes = []
    for replica in replicas:
        if not replica.alive:
            continue
        since = replica.state.get("ready_since")
        if ready.get(replica.url):
            if since is None:
                notes.append((replica, {"ready_since": now}))
            elif replica.state.get("exits") and now - since >= reset_after:
                notes.append((replica, {"exits": 0, "exits_total": _exits_total(replica.state)}))
        elif since is not None:
            notes.append((replica, {"ready_since": None}))
    return notes


def _update_replica(replica: _Replica, fields: dict) -> None:
    """Write `fields` into the replica's state (caller holds the lock) unless another process replaced it."""
    state = _read_json(replica.path)
    if state is None or (state.get("pid"), state.get("start_time")) != (replica.pid, replica.start_time):
        return
    state.update(fields)
    _write_json(replica.path, state)
    replica.state = state


def _start_replica(paths: _Paths, release: ReleaseSpec, index: int, previous: _Exit | None) -> None:
    """Start replica `index` on a fresh port; `previous` is how its last process ended, if it ran before."""
    artifact = release.artifact_path
    if not artifact or not os.path.isfile(artifact):
        raise TargetError(
            f"release {release.number} ({release.model_name} v{release.model_version}): the model file "
            f"{artifact or '(none given)'} is not on this machine; the local target serves the artifact from "
            "this machine's storage: check SLIPWAY_ARTIFACT_ROOT and that the version's file still exists"
        )
    port = _free_port()
    command = [
        sys.executable, "-m", "inference_runtime",
        "--model", artifact,
        "--name", release.model_name,
        "--version", str(release.model_version),
        "--sha256", release.artifact_sha256,
        "--host", REPLICA_HOST,
        "--port", str(port),
        "--max-batch-size", str(release.settings.max_batch_size),
        "--max-delay-ms", str(release.settings.max_delay_ms),
        "--drain-timeout-s", str(STOP_GRACE_S - 2),
        # As on Kubernetes: a replica sees a GPU only when its settings ask for one.
        "--device", "cuda" if release.settings.gpus else "cpu",
    ]  # fmt: skip
    if release.signature:
        command += ["--signature", json.dumps(release.signature, separators=(",", ":"))]  # see MAX_SIGNATURE_BYTES
    threads = _cpu_threads(release.settings.cpu_limit)
    if threads:
        command += ["--num-threads", str(threads)]
    path = paths.release(release.number) / f"replica-{index}.json"
    pid, start_time = _spawn(command, path.with_suffix(".log"), f"replica {index} of release {release.number}")
    state = {"release": release.number, "index": index, "port": port, "pid": pid, "start_time": start_time}
    _write_json(path, {**state, **(previous.as_state() if previous else {})})


def _cpu_threads(cpu_limit: str) -> int | None:
    """A CPU limit as torch threads: "500m" → 1, "2" → 2; None when unset."""
    if not cpu_limit:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m?)", cpu_limit.strip())
    if not match:
        raise TargetError(f"cpu_limit {cpu_limit!r} is not a CPU quantity such as 500m or 2")
    cores = float(match[1]) / (1000 if match[2] else 1)
    return max(1, math.ceil(cores))


def _old_log(log_path: Path) -> Path:
    return log_path.with_name(f"{log_path.name}.1")


def _too_long(log_path: Path) -> bool:
    try:
        return log_path.stat().st_size > settings.SLIPWAY_LOCAL_LOG_MAX_BYTES
    except FileNotFoundError:
        return False


def _trim_log(log_path: Path) -> None:
    """Keep the log of a running process short: copy it to `.1` and empty it in place (caller holds the lock).

    The process opened it for append, so it goes on writing at the start of the emptied file (a
    rename would leave it writing to the old copy for ever). A line written in the instant between
    the copy and the truncation is lost: the price of not asking the child to reopen its log.
    """
    old = _old_log(log_path)
    fd, tmp = tempfile.mkstemp(dir=log_path.parent, prefix=f".{old.name}.")
    try:
        with os.fdopen(fd, "wb") as copy, open(log_path, "r+b") as log:
            shutil.copyfileobj(log, copy)
            log.truncate(0)
        os.replace(tmp, old)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, FileNotFoundError):  # removed meanwhile (teardown)
            return
        raise
    with open(log_path, "ab") as log:
        # A marker: the reason for an exit is read after the last one, and this run goes on after it.
        log.write(f"{MARKER} continued at {time.strftime('%Y-%m-%d %H:%M:%S')}; earlier lines in {old.name}\n".encode())


_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d [\d:,.]+ [A-Z]+ [\w.]+: ")


def _last_words(log_path: Path, limit: int = 300) -> str:
    """The line of the latest run's log that best says why it ended: its last error, else its last line."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 16384))
            text = fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return "no log"
    lines = [line.strip() for line in text.rsplit(MARKER, 1)[-1].splitlines()[1:] if line.strip()]
    if not lines:
        return "no output"
    errors = [line for line in lines if " ERROR " in line or " CRITICAL " in line or "Error:" in line]
    line = errors[-1] if errors else lines[-1]
    line = _LOG_PREFIX.sub("", line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _probe_ready(replicas: Iterable[_Replica]) -> dict[str, bool]:
    """GET /v2/health/ready of every live replica at once: url → answered 200."""
    alive = [r for r in replicas if r.alive]
    answers = _concurrently(lambda r: _get(r.port, "/v2/health/ready", PROBE_TIMEOUT_S)[0] == 200, alive)
    return {r.url: ok for r, ok in zip(alive, answers, strict=True)}


def _ready_urls(replicas: list[_Replica], ready: dict[str, bool]) -> list[str]:
    return [r.url for r in replicas if ready.get(r.url)]


def _release_status(paths: _Paths, number: int, replicas: list[_Replica], ready: dict[str, bool]) -> ReleaseStatus:
    desired = int((_read_json(paths.release(number) / "release.json") or {}).get("desired", 0))
    status = ReleaseStatus(number=number, desired=desired, updated=desired)
    for replica in replicas:
        is_ready = replica.alive and ready.get(replica.url, False)
        warning = None
        if not replica.alive:
            ended = replica.exit()
            if ended.refused:
                warning = f"replica {replica.index} {ended.summary}"
                status.failed = status.failed or f"the runtime refused to serve the model: {warning}"
            elif ended.terminal:
                warning = f"CrashLoopBackOff: replica {replica.index} {ended.summary}"
                status.failed = status.failed or f"{warning}; it is not started again"
            else:
                warning = f"CrashLoopBackOff: replica {replica.index} {ended.summary}; the next apply restarts it"
        elif not is_ready and (previous := _Exit.from_state(replica.state)):
            warning = f"CrashLoopBackOff: replica {replica.index} {previous.summary}; starting again"
        if warning:
            status.warnings.append(warning)
        status.replicas.append(
            ReplicaStatus(
                name=f"pid {replica.pid}" if replica.pid is not None else f"replica {replica.index} (stopped)",
                ready=is_ready,
                metrics_url=f"{replica.url}/metrics" if replica.alive else None,
                restarts=_exits_total(replica.state),
                warning=warning,
            )
        )
        status.ready += is_ready
    status.available = status.ready
    extra = sum(1 for r in replicas if r.index >= desired and r.alive)
    status.done = status.ready == desired and not extra and status.failed is None
    if status.failed:
        status.message = f"release {number} failed: {status.failed}"
    elif extra:
        status.message = f"waiting for release {number}: {extra} old replica(s) pending termination"
    elif not status.done:
        status.message = f"waiting for release {number}: {status.ready} of {desired} replica(s) ready"
    return status


# --- the router --------------------------------------------------------------------------
def _read_port(paths: _Paths) -> int | None:
    try:
        return int(paths.port.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _stable_port(paths: _Paths) -> int:
    """The deployment's port: allocated once under a lock, so two deployments never share one."""
    port = _read_port(paths)
    if port is not None:
        return port
    with _locked(_deployments_dir() / "ports.lock"):
        port = _read_port(paths)
        if port is not None:
            return port
        taken = {_read_port(_Paths(p.parent.name, p.parent)) for p in _deployments_dir().glob("*/port")}
        first, last = settings.SLIPWAY_LOCAL_PORTS
        for candidate in range(first, last + 1):
            if candidate not in taken and _can_bind(settings.SLIPWAY_LOCAL_HOST, candidate):
                paths.root.mkdir(parents=True, exist_ok=True)
                paths.port.write_text(str(candidate))
                return candidate
    raise TargetError(
        f"no free port in SLIPWAY_LOCAL_PORTS {first}-{last}: widen the range, "
        "or tear down deployments you no longer need"
    )


def _can_bind(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the router binds
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _connect_host() -> str:
    """Where this machine reaches the routers: their address, or loopback when they listen everywhere."""
    host = settings.SLIPWAY_LOCAL_HOST
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104


def _endpoint(port: int) -> str:
    host = _connect_host()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _ensure_router(paths: _Paths, generation: str, *, wait: bool) -> int:
    """Start the deployment's router unless it runs; `wait`: until it serves `generation`. Its port."""
    port = _stable_port(paths)
    router = _read_json(paths.router)
    if router is not None and _is_running(router["pid"], router["start_time"]):
        if wait:
            _wait_for_router(paths, router, generation)
        return port
    if router is not None:
        _CHILDREN.pop(router["pid"], None)
    _wait_for_router(paths, _start_router(paths, port), generation)
    return port


def _start_router(paths: _Paths, port: int) -> dict:
    command = [
        sys.executable, "-m", "deployments.targets.router",
        "--host", settings.SLIPWAY_LOCAL_HOST, "--port", str(port), "--routes", str(paths.routes),
    ]  # fmt: skip
    pid, start_time = _spawn(command, paths.router_log, f"router of {paths.key} on port {port}")
    router = {"pid": pid, "start_time": start_time, "port": port}
    _write_json(paths.router, router)
    return router


def _wait_for_router(paths: _Paths, router: dict, generation: str) -> None:
    """Until the router answers with the routes just written: traffic follows route() once it returns."""
    port = _read_port(paths)
    deadline = time.monotonic() + ROUTER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not _is_running(router["pid"], router["start_time"]):
            raise TargetError(
                f"the router of deployment {paths.key} stopped: {_last_words(paths.router_log)}. If another "
                f"program holds port {port} of {settings.SLIPWAY_LOCAL_HOST}, stop it and route again",
                retryable=True,
            )
        status, body = _get(port, "/-/healthy", PROBE_TIMEOUT_S, host=_connect_host())
        if status == 200:
            health = json.loads(body)
            if health.get("pid") == router["pid"] and health.get("generation") == generation:
                return
        time.sleep(0.02)
    raise TargetError(
        f"the router of deployment {paths.key} did not take the new routes within {ROUTER_START_TIMEOUT_S:.0f} s: "
        f"see {paths.router_log}",
        retryable=True,
    )


def _await_router(paths: _Paths, generation: str, timeout: float = 2.0) -> None:
    """If the router runs, give it a moment to take new routes (before replicas it no longer serves stop)."""
    router, port = _read_json(paths.router), _read_port(paths)
    if router is None or port is None or not _is_running(router["pid"], router["start_time"]):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = _get(port, "/-/healthy", PROBE_TIMEOUT_S, host=_connect_host())
        if status == 200 and json.loads(body).get("generation") == generation:
            return
        time.sleep(0.02)


# --- HTTP --------------------------------------------------------------------------------
def _get(port: int, path: str, timeout: float, *, host: str = REPLICA_HOST) -> tuple[int | None, bytes]:
    """A GET on loopback: (status, body), or (None, b"") when nothing answers in time."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None, b""
    finally:
        conn.close()


def _concurrently(fn: Callable[[Any], Any], items: list) -> list:
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        return list(pool.map(fn, items))
