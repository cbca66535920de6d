"""The local target with real runtime processes, a real router and real models (no database).

Each runtime imports torch (~1-2 s, ~200 MB), so the tests start few of them and run
them on one thread each. Every process is stopped after each test, even a failed one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import torch
from django.core.management import call_command

from deployments.targets import DeploymentRef, ReleaseSpec, RuntimeSettings, TargetError, get_target
from deployments.targets.local import LocalTarget
from tests.conftest import free_port_range, wait_for
from tests.models_zoo import MLP, MLP_SIGNATURE

ROOT = Path(__file__).resolve().parents[2]
IRIS = DeploymentRef(id=1, key="iris-dev", model_name="iris", environment="dev")
ROWS = [[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, -3.0, 0.0]]


# --- fixtures ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def second_model(tmp_path_factory) -> Path:
    """Another MLP with other weights: its outputs tell which release answered."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("second") / "mlp-b.pt"
    torch.jit.save(torch.jit.script(MLP().eval()), str(path))
    return path


@pytest.fixture
def var_dir(settings, tmp_path) -> Path:
    settings.VAR_DIR = tmp_path / "var"
    # Ports of our own, so tests beside other runs on this machine don't race for 8100.
    first = free_port_range(21)
    settings.SLIPWAY_LOCAL_PORTS = (first, first + 20)
    return settings.VAR_DIR


@pytest.fixture
def local(var_dir):
    """A LocalTarget on a fresh VAR_DIR; afterwards every deployment is torn down and nothing survives."""
    target = LocalTarget()
    yield target
    root = var_dir / "deployments"
    recorded = recorded_processes(root)
    for directory in root.glob("*/"):
        try:
            target.teardown(DeploymentRef(id=0, key=directory.name, model_name="", environment=""))
        except Exception as exc:
            print(f"teardown of {directory.name} failed: {exc}")
    for pid, start_time in recorded:
        if start_time_of(pid) == start_time:
            os.killpg(pid, signal.SIGKILL)


def recorded_processes(root: Path) -> list[tuple[int, int]]:
    found = []
    for path in [*root.glob("*/router.json"), *root.glob("*/release-*/replica-*.json")]:
        state = json.loads(path.read_text())
        if state.get("pid"):
            found.append((state["pid"], state["start_time"]))
    return found


# --- helpers -----------------------------------------------------------------------------


def start_time_of(pid: int) -> int | None:
    """From /proc, independently of the target: None once the process is gone (or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    return None if fields[0] in "ZX" else int(fields[19])


def runtimes_serving(artifact: Path) -> list[int]:
    """Pids of every runtime process on this machine serving `artifact`, whoever started it."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, PermissionError, NotADirectoryError):
            continue
        if b"inference_runtime" in cmdline and str(artifact).encode() in cmdline and start_time_of(int(proc.name)):
            pids.append(int(proc.name))
    return pids


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def release(number: int, artifact: Path, *, digest: str | None = None) -> ReleaseSpec:
    return ReleaseSpec(
        number=number,
        model_name="iris",
        model_version=number,
        artifact_sha256=digest or sha256(artifact),
        signature=MLP_SIGNATURE,
        settings=RuntimeSettings(cpu_limit="1"),  # one torch thread: this machine has two cores
        artifact_path=str(artifact),
    )


def expected(artifact: Path) -> list[float]:
    with torch.no_grad():
        return torch.jit.load(str(artifact))(torch.tensor(ROWS)).flatten().tolist()


def infer(endpoint: str) -> tuple[int, list[float]]:
    """One request through the endpoint: (the release that answered, the outputs)."""
    body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": ROWS}]}
    response = httpx.post(f"{endpoint}/v2/models/iris/infer", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return int(response.headers["X-Slipway-Release"]), response.json()["outputs"][0]["data"]


def answered_by(endpoint: str, models: dict[int, Path], n: int) -> list[int]:
    """`n` requests; each answer must be exactly the output of the release that says it answered."""
    outputs = {number: expected(path) for number, path in models.items()}
    releases = []
    for _ in range(n):
        number, data = infer(endpoint)
        assert data == pytest.approx(outputs[number], abs=1e-5)
        releases.append(number)
    return releases


def wait_done(target, number: int, deployment: DeploymentRef = IRIS):
    def done():
        status = target.status(deployment).releases[number]
        assert status.failed is None, status.failed
        return status if status.done else None

    return wait_for(done, timeout=60, interval=0.2, what=f"release {number} to be done")


def pid_of(target, number: int, deployment: DeploymentRef = IRIS) -> int:
    (replica,) = target.status(deployment).releases[number].replicas
    return int(replica.name.removeprefix("pid "))


def successes(metrics_texts: list[str]) -> float:
    total = 0.0
    for text in metrics_texts:
        for line in text.splitlines():
            if line.startswith("slipway_inference_requests_total{") and 'outcome="success"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# --- serving -----------------------------------------------------------------------------
def test_a_release_serves_through_the_stable_endpoint(local, model_files):
    model = model_files["torchscript"]
    assert get_target("local").exact_weights(IRIS) is True
    local.apply(IRIS, release(1, model), 1)
    local.apply(IRIS, release(1, model), 1)  # idempotent: no second process
    status = wait_done(local, 1)
    assert (status.desired, status.updated, status.ready, status.available) == (1, 1, 1, 1)
    assert status.warnings == [] and status.message == ""
    pid = pid_of(local, 1)
    assert runtimes_serving(model) == [pid]
    assert httpx.get(status.replicas[0].metrics_url).status_code == 200
    assert local.status(IRIS).endpoint is None  # no router before the first route()

    endpoint = local.route(IRIS, {1: 100})
    assert local.status(IRIS).endpoint == endpoint
    assert local.status(IRIS).weights == {1: 100}
    assert answered_by(endpoint, {1: model}, 3) == [1, 1, 1]
    assert successes(local.metrics(IRIS, 1)) == 3

    # The stable port stays; apply() again changes nothing; a fresh instance (a restarted worker) sees the same.
    assert local.route(IRIS, {1: 100}) == endpoint
    local.apply(IRIS, release(1, model), 1)
    assert runtimes_serving(model) == [pid]
    again = LocalTarget().status(IRIS)
    assert again == local.status(IRIS)
    assert again.endpoint == endpoint
    assert again.releases[1].replicas[0].name == f"pid {pid}"


def test_traffic_splits_exactly_by_weight_and_a_removed_release_leaves_nothing(local, model_files, second_model):
    first, second = model_files["torchscript"], second_model
    assert expected(first) != pytest.approx(expected(second), abs=1e-3)
    local.apply(IRIS, release(1, first), 1)
    local.apply(IRIS, release(2, second), 1)
    wait_done(local, 1)
    wait_done(local, 2)
    models = {1: first, 2: second}

    endpoint = local.route(IRIS, {1: 20, 2: 80})
    assert answered_by(endpoint, models, 50).count(1) == 10
    assert successes(local.metrics(IRIS, 1)) == 10
    assert successes(local.metrics(IRIS, 2)) == 40

    assert local.route(IRIS, {2: 100}) == endpoint
    assert set(answered_by(endpoint, models, 10)) == {2}

    pid = pid_of(local, 1)
    release_dir = Path(local_dir(IRIS)) / "release-1"
    assert release_dir.is_dir()
    local.remove(IRIS, 1)
    assert start_time_of(pid) is None
    assert runtimes_serving(first) == []
    assert not release_dir.exists()
    routes = json.loads((Path(local_dir(IRIS)) / "routes.json").read_text())
    assert list(routes["releases"]) == ["2"]
    assert list(local.status(IRIS).releases) == [2]
    local.remove(IRIS, 1)  # idempotent
    local.remove(IRIS, 7)  # never existed
    assert set(answered_by(endpoint, models, 5)) == {2}


def local_dir(deployment: DeploymentRef) -> Path:
    from django.conf import settings

    return Path(settings.VAR_DIR) / "deployments" / deployment.key


def test_make_cleans_command_stops_every_local_deployment(local, model_files):
    """`make clean` runs stop_local_deployments before it deletes var/, where the processes are recorded."""
    model = model_files["torchscript"]
    local.apply(IRIS, release(1, model), 1)
    wait_done(local, 1)
    endpoint = local.route(IRIS, {1: 100})
    processes = [pid_of(local, 1), json.loads((local_dir(IRIS) / "router.json").read_text())["pid"]]
    said = io.StringIO()

    call_command("stop_local_deployments", stdout=said)

    assert said.getvalue() == "Stopped the local deployments iris-dev.\n"
    assert [start_time_of(pid) for pid in processes] == [None, None]
    assert runtimes_serving(model) == []
    assert not local_dir(IRIS).exists()
    assert port_is_free(int(endpoint.rsplit(":", 1)[1]))


# --- failures ----------------------------------------------------------------------------
def test_a_killed_replica_is_reported_and_restarted_by_apply(local, model_files):
    model = model_files["torchscript"]
    local.apply(IRIS, release(1, model), 1)
    wait_done(local, 1)
    endpoint = local.route(IRIS, {1: 100})
    pid = pid_of(local, 1)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: start_time_of(pid) is None, timeout=10, what="the replica to die")

    status = local.status(IRIS).releases[1]
    assert (status.ready, status.done, status.failed) == (0, False, None)
    assert status.replicas[0].ready is False
    (warning,) = status.warnings
    assert warning.startswith("CrashLoopBackOff: replica 0 exited 1 time (killed by SIGKILL)")
    assert "waiting for release 1: 0 of 1" in status.message

    local.apply(IRIS, release(1, model), 1)
    status = wait_done(local, 1)
    assert status.replicas[0].restarts == 1
    assert status.warnings == []
    assert pid_of(local, 1) != pid
    assert local.route(IRIS, {1: 100}) == endpoint  # as the engine does once the release is done
    assert answered_by(endpoint, {1: model}, 2) == [1, 1]  # the router follows the new replica

    # Two replicas take turns; scaling down stops the extra one and keeps the first.
    first_pid = pid_of(local, 1)
    local.apply(IRIS, release(1, model), 2)
    status = wait_done(local, 1)
    pids = [int(r.name.removeprefix("pid ")) for r in status.replicas]
    assert pids[0] == first_pid and len(set(pids)) == 2
    assert sorted(runtimes_serving(model)) == sorted(pids)
    local.route(IRIS, {1: 100})
    answered_by(endpoint, {1: model}, 4)
    assert sorted(successes([text]) for text in local.metrics(IRIS, 1)) == [2, 4]  # 2 before, then 2 each
    local.apply(IRIS, release(1, model), 1)
    assert start_time_of(pids[1]) is None
    assert pid_of(local, 1) == first_pid
    assert answered_by(endpoint, {1: model}, 3) == [1, 1, 1]  # none reaches the stopped one

    # Zero replicas: no process, but the release is still known.
    local.apply(IRIS, release(1, model), 0)
    assert start_time_of(first_pid) is None
    status = local.status(IRIS).releases[1]
    assert (status.desired, status.ready, status.done, status.replicas) == (0, 0, True, [])


def test_a_refused_model_fails_with_the_runtimes_reason(local, model_files):
    model = model_files["torchscript"]
    local.apply(IRIS, release(1, model, digest="0" * 64), 1)

    def failed():
        return local.status(IRIS).releases[1].failed

    reason = wait_for(failed, timeout=60, interval=0.2, what="the release to fail")
    assert reason.startswith("the runtime refused to serve the model: replica 0 exited 1 time (code 2): ")
    assert "refusing to start: SHA-256 mismatch" in reason
    status = local.status(IRIS).releases[1]
    assert status.done is False and status.ready == 0

    local.apply(IRIS, release(1, model, digest="0" * 64), 1)  # not started again: it cannot help
    assert runtimes_serving(model) == []
    status = local.status(IRIS).releases[1]
    assert status.failed == reason
    assert status.replicas[0].name == "replica 0 (stopped)"


def test_a_replica_whose_port_was_taken_meanwhile_starts_again_on_another(local, model_files, monkeypatch):
    """The port is picked free, but the runtime binds it seconds later (after importing torch): another
    program, or an outgoing connection's source port, may take it meanwhile. That is no refusal of the
    model: the next apply starts the replica on a fresh port."""
    from deployments.targets import local as local_module

    model = model_files["torchscript"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])
        real = local_module._free_port
        monkeypatch.setattr(local_module, "_free_port", lambda: next(ports, None) or real())
        local.apply(IRIS, release(1, model), 1)
        pid = pid_of(local, 1)
        wait_for(lambda: start_time_of(pid) is None, timeout=60, what="the runtime to give up on the taken port")

    status = local.status(IRIS).releases[1]
    assert status.failed is None, status.failed
    (warning,) = status.warnings
    assert warning.startswith("CrashLoopBackOff: replica 0 exited 1 time (code 2): ")
    assert "could not listen on" in warning and warning.endswith("the next apply restarts it")

    local.apply(IRIS, release(1, model), 1)
    status = wait_done(local, 1)
    assert status.replicas[0].restarts == 1 and pid_of(local, 1) != pid
    assert answered_by(local.route(IRIS, {1: 100}), {1: model}, 2) == [1, 1]


def test_a_replica_that_keeps_exiting_is_given_up_as_a_crash_loop(local, model_files):
    model = model_files["torchscript"]
    local.apply(IRIS, release(1, model), 1)
    for exits in range(1, 5):
        pid = pid_of(local, 1)
        os.kill(pid, signal.SIGKILL)  # long before the model loads: cheap
        wait_for(lambda: start_time_of(pid) is None, timeout=10, what="the replica to die")
        status = local.status(IRIS).releases[1]
        assert f"replica 0 exited {exits} time" in status.warnings[0]
        assert (status.failed is not None) == (exits == 4)
        local.apply(IRIS, release(1, model), 1)
    assert runtimes_serving(model) == []
    status = local.status(IRIS).releases[1]
    assert status.failed.startswith("CrashLoopBackOff: replica 0 exited 4 times (killed by SIGKILL)")
    assert status.failed.endswith("it is not started again")


def test_a_replica_that_served_for_a_while_counts_its_exits_afresh_but_a_crash_loop_still_stops(
    local, model_files, settings
):
    """As Kubernetes resets its back-off after 10 minutes of running: a replica the sweeper restarts
    once in a long while is never given up, while one that dies soon after it got ready still is."""
    settings.SLIPWAY_LOCAL_RESTART_RESET_S = 1.0
    model = model_files["torchscript"]
    local.apply(IRIS, release(1, model), 1)

    def kill_once_ready(*, serve_for: float) -> str:
        wait_done(local, 1)  # its status() calls see it ready: they note since when
        time.sleep(serve_for)
        assert local.status(IRIS).releases[1].warnings == []  # a look after the healthy run, as the sweeper's
        pid = pid_of(local, 1)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: start_time_of(pid) is None, timeout=10, what="the replica to die")
        status = local.status(IRIS).releases[1]
        local.apply(IRIS, release(1, model), 1)
        return status.failed or status.warnings[0]

    for kills in range(1, 6):  # more than MAX_RESTARTS times, each after a healthy run
        said = kill_once_ready(serve_for=1.2)
        assert said.startswith("CrashLoopBackOff: replica 0 exited 1 time (killed by SIGKILL)"), (kills, said)
    assert wait_done(local, 1).replicas[0].restarts == 5  # the count shown is the whole life's

    # Dying soon after getting ready, again and again, is a crash loop: counted on from the last kill.
    said = [kill_once_ready(serve_for=0) for _ in range(3)]
    assert [text.split(" (")[0] for text in said] == [
        "CrashLoopBackOff: replica 0 exited 2 times",
        "CrashLoopBackOff: replica 0 exited 3 times",
        "CrashLoopBackOff: replica 0 exited 4 times",
    ]
    assert said[-1].endswith("it is not started again")
    assert runtimes_serving(model) == []


def test_logs_are_kept_short_while_their_processes_run_and_when_they_start_again(local, model_files, settings):
    """A runtime logs a line per failed request and runs for weeks: its log (and the router's) is copied to
    `.1` and emptied once it passes the limit, at a look at the status (the sweeper's) or a start."""
    settings.SLIPWAY_LOCAL_LOG_MAX_BYTES = 4096
    model = model_files["torchscript"]
    local.apply(IRIS, release(1, model), 1)
    wait_done(local, 1)
    endpoint = local.route(IRIS, {1: 100})
    replica_log = local_dir(IRIS) / "release-1" / "replica-0.log"
    router_log = local_dir(IRIS) / "router.log"

    def grow(log: Path, what: str) -> None:  # as the process does: appending
        with open(log, "a") as fh:
            fh.writelines(f"2026-01-01 00:00:00,000 WARNING slipway: {what} {n}\n" for n in range(100))

    grow(replica_log, "inference failed: first")
    grow(router_log, "first")
    local.status(IRIS)
    for log in (replica_log, router_log):
        old = Path(f"{log}.1").read_text()
        assert "first 99" in old and "--- slipway:" in old  # the run's start, kept in the old copy
        assert log.read_text().startswith("--- slipway: continued at ") and log.stat().st_size < 200

    # The processes go on writing at the start of the emptied files (they append).
    local.route(IRIS, {1: 100})  # the router logs the new routes
    assert "\0" not in router_log.read_text() and "routes" in router_log.read_text().splitlines()[1]
    assert answered_by(endpoint, {1: model}, 2) == [1, 1]

    # One old copy: the next trim replaces it.
    grow(replica_log, "inference failed: second")
    local.status(IRIS)
    old = Path(f"{replica_log}.1").read_text()
    assert "second 99" in old and "first" not in old
    assert sorted(p.name for p in replica_log.parent.glob("replica-0.log*")) == ["replica-0.log", "replica-0.log.1"]

    # A dead replica's log is left as it is until it starts again: its last words say why it exited.
    pid = pid_of(local, 1)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: start_time_of(pid) is None, timeout=10, what="the replica to die")
    grow(replica_log, "inference failed: third")
    (warning,) = local.status(IRIS).releases[1].warnings
    assert warning.startswith(
        "CrashLoopBackOff: replica 0 exited 1 time (killed by SIGKILL): inference failed: third 99"
    )
    local.apply(IRIS, release(1, model), 1)
    assert "third 99" in Path(f"{replica_log}.1").read_text()  # moved aside as it started again
    assert replica_log.read_text().startswith("--- slipway: replica 0 of release 1 at ")
    wait_done(local, 1)
    assert answered_by(endpoint, {1: model}, 2) == [1, 1]


def test_a_missing_artifact_is_refused_with_what_to_check(local, tmp_path):
    missing = tmp_path / "gone.pt"
    spec = ReleaseSpec(1, "iris", 1, "0" * 64, None, RuntimeSettings(), artifact_path=str(missing))
    with pytest.raises(TargetError, match=f"the model file {missing} is not on this machine.*SLIPWAY_ARTIFACT_ROOT"):
        local.apply(IRIS, spec, 1)


def test_a_bad_key_or_bad_weights_are_refused(local):
    with pytest.raises(TargetError, match="DNS-1035"):
        local.status(DeploymentRef(id=2, key="../etc", model_name="x", environment="dev"))
    with pytest.raises(TargetError, match="sum to 100"):
        local.route(IRIS, {1: 50, 2: 40})


# --- survival and teardown ---------------------------------------------------------------------
WORKER = textwrap.dedent(
    """
    import json, sys, time
    import django
    django.setup()
    from deployments.targets import DeploymentRef, ReleaseSpec, RuntimeSettings, get_target

    target = get_target("local")
    deployment = DeploymentRef(**json.loads(sys.argv[1]))
    spec = json.loads(sys.argv[2])
    spec["settings"] = RuntimeSettings(**spec["settings"])
    target.apply(deployment, ReleaseSpec(**spec), 1)
    print(target.route(deployment, {1: 100}), flush=True)
    time.sleep(600)
    """
)


def test_replicas_and_router_survive_their_worker_and_teardown_stops_them(local, model_files, var_dir, settings):
    """A worker process starts a release and is killed; its processes go on, and another process manages them."""
    model = model_files["torchscript"]
    spec = release(1, model)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "controlplane.settings",
        "PYTHONPATH": str(ROOT),
        "SLIPWAY_VAR_DIR": str(var_dir),
        "SLIPWAY_LOCAL_PORTS": "{}-{}".format(*settings.SLIPWAY_LOCAL_PORTS),
    }
    spec_json = {**spec.__dict__, "settings": spec.settings.__dict__}
    deployment_json = {"id": IRIS.id, "key": IRIS.key, "model_name": IRIS.model_name, "environment": IRIS.environment}
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(deployment_json), json.dumps(spec_json)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        endpoint = worker.stdout.readline().decode().strip()
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # as a worker dies: its process group with it
        worker.wait()
    assert endpoint.startswith("http://127.0.0.1:")

    wait_done(local, 1)
    status = local.status(IRIS)
    assert status.endpoint == endpoint
    pid = pid_of(local, 1)
    assert answered_by(endpoint, {1: model}, 2) == [1, 1]
    local.apply(IRIS, spec, 1)
    assert runtimes_serving(model) == [pid]
    # Not our child: when it dies, its exit code is lost, but not the fact.
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: start_time_of(pid) is None, timeout=10, what="the replica to die")
    (warning,) = local.status(IRIS).releases[1].warnings
    assert warning.startswith("CrashLoopBackOff: replica 0 exited 1 time (exit code unknown)")

    router_pid = json.loads((local_dir(IRIS) / "router.json").read_text())["pid"]
    port = int(endpoint.rsplit(":", 1)[1])
    local.teardown(IRIS)
    assert start_time_of(router_pid) is None
    assert not local_dir(IRIS).exists()
    assert port_is_free(port)
    assert local.status(IRIS).endpoint is None and local.status(IRIS).releases == {}
    local.teardown(IRIS)  # idempotent


def test_each_deployment_keeps_its_own_port_until_teardown(local, settings):
    first = settings.SLIPWAY_LOCAL_PORTS[0]
    settings.SLIPWAY_LOCAL_PORTS = (first, first + 1)
    a, b, c = (DeploymentRef(id=i, key=f"app-{i}", model_name="app", environment="dev") for i in (1, 2, 3))
    endpoint_a = local.route(a, {1: 100})
    endpoint_b = local.route(b, {1: 100})
    assert {endpoint_a, endpoint_b} == {f"http://127.0.0.1:{first}", f"http://127.0.0.1:{first + 1}"}
    with pytest.raises(TargetError, match=f"no free port in SLIPWAY_LOCAL_PORTS {first}-{first + 1}: widen the range"):
        local.route(c, {1: 100})

    # No replica yet: the router says so.
    response = httpx.get(f"{endpoint_a}/v2/health/ready")
    assert response.status_code == 503
    assert "release 1 has no ready replica" in response.json()["error"]

    # A router that died comes back on the same port.
    router_pid = json.loads((local_dir(a) / "router.json").read_text())["pid"]
    os.kill(router_pid, signal.SIGKILL)
    wait_for(lambda: local.status(a).endpoint is None, timeout=10, what="the router to be seen dead")
    assert local.route(a, {1: 100}) == endpoint_a
    assert LocalTarget().status(a).endpoint == endpoint_a
    # apply() brings it back too, since the deployment was routed before.
    router_pid = json.loads((local_dir(a) / "router.json").read_text())["pid"]
    os.kill(router_pid, signal.SIGKILL)
    wait_for(lambda: local.status(a).endpoint is None, timeout=10, what="the router to be seen dead")
    local.apply(a, ReleaseSpec(1, "app", 1, "0" * 64, None, RuntimeSettings()), 0)
    assert local.status(a).endpoint == endpoint_a
    assert httpx.get(f"{endpoint_a}/-/healthy").json()["weights"] == {"1": 100}

    local.teardown(a)
    assert local.route(c, {1: 100}) == endpoint_a  # a's port is free again
