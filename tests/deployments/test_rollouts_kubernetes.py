"""The rollout engine end to end on the kubernetes target: a real worker, the official client, the API stand-in.

The worker process reaches the stand-in (started in this process) over HTTP through
a kubeconfig the test writes, as it would reach a cluster; the environment is made
through the API. A `Cluster` thread plays the Deployment controller and the kubelet
meanwhile, and can be told to misbehave for one release. Images come from a build
that already succeeded for the version: the cache-hit path users get when the image
exists, so no Docker build runs here. Every manifest the worker sends is checked
against the strict Kubernetes schemas by the stand-in.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid

import pytest
from django.conf import settings
from django.utils import timezone

from controlplane.audit import verify_chain
from deployments.builds import image_ref
from deployments.models import BuildStatus, ImageBuild, Release, Rollout
from deployments.services import base_image_for, runtime_version
from deployments.targets import kube_objects as ko
from inference_runtime.metrics import Metrics
from registry.models import ModelVersion
from tests.conftest import wait_for
from tests.deployments.kube_schemas import validate_manifest
from tests.deployments.kube_standin import KubeStandin, write_kubeconfig
from tests.deployments.rollouts import deploy, ledger_of, upload, wait_state

pytestmark = [pytest.mark.worker, pytest.mark.slow]

NS = "ml"
TOKEN = f"tok-{uuid.uuid4().hex}"
KINDS = ("deployments", "services", "ingresses", "httproutes", "pods")
CANARY_50_THEN_PAUSE = {"strategy": "canary", "steps": [{"set_weight": 50}, {"pause": {}}]}


# --- Playing the Deployment controller and the kubelet ------------------------------------------
class Cluster:
    """The Deployment controller and the kubelet for the stand-in, in a thread, while the worker rolls out.

    A Deployment's spec is acted on `delay` s after it is first seen, so the engine meets
    "waiting for spec update to be observed" as it would on a cluster. Then its pods are
    made to match spec.replicas from the pod template and its status is written, zero
    counts left out as the API leaves them. Each ready pod serves `per_tick` requests a
    tick, counted by the runtime's own Metrics class: its /metrics through the pod proxy
    reads as a real replica's.

    Told to, it misbehaves for one Deployment: `never_available` pods wait in
    ImagePullBackOff and, `stall_s` after the Deployment appeared, its Progressing
    condition turns ProgressDeadlineExceeded; `serve_errors` pods fail a share of requests.
    """

    def __init__(
        self,
        kube: KubeStandin,
        namespace: str,
        *,
        delay: float = 0.3,
        stall_s: float = 1.5,
        tick: float = 0.1,
        per_tick: int = 10,
    ):
        self.kube, self.ns = kube, namespace
        self.delay, self.stall_s, self.tick, self.per_tick = delay, stall_s, tick, per_tick
        self.stuck: set[str] = set()
        self.error_share: dict[str, float] = {}
        self.first_seen: dict[str, float] = {}  # Deployment name -> when it appeared
        self.observed: dict[tuple[str, int], float] = {}  # (name, generation) -> when that spec appeared
        self.replicas: dict[str, tuple[str, Metrics]] = {}  # ready pod -> (its Deployment, its metrics)
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster", daemon=True)
        self._ips = iter(range(2, 1_000_000))

    def never_available(self, deployment: str) -> None:
        self.stuck.add(deployment)

    def serve_errors(self, deployment: str, share: float) -> None:
        self.error_share[deployment] = share

    def __enter__(self) -> Cluster:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self.failure is not None:
            raise AssertionError(f"the cluster thread failed: {self.failure!r}") from self.failure

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.tick):
                with self.kube.lock:  # one pass at one instant: a Deployment deleted meanwhile gets no pods
                    for dep in self.kube.list("deployments", self.ns):
                        self._reconcile(dep)
                    self._serve()
        except BaseException as exc:
            self.failure = exc

    def _reconcile(self, dep: dict) -> None:
        meta, spec = dep["metadata"], dep["spec"]
        name, now = meta["name"], time.monotonic()
        self.first_seen.setdefault(name, now)
        if now - self.observed.setdefault((name, meta["generation"]), now) < self.delay:
            return
        want, stuck = spec["replicas"], name in self.stuck
        template_hash = hashlib.sha256(json.dumps(spec["template"], sort_keys=True).encode()).hexdigest()[:10]
        wanted = [f"{name}-{template_hash}-{i}" for i in range(want)]
        selector = ",".join(f"{k}={v}" for k, v in spec["selector"]["matchLabels"].items())
        running = [pod["metadata"]["name"] for pod in self.kube.list("pods", self.ns, selector)]
        for pod_name in sorted(set(running) - set(wanted)):
            self.kube.delete_pod(self.ns, pod_name)
            self.replicas.pop(pod_name, None)
        for pod_name in wanted:
            if pod_name not in running:
                self.kube.put_pod(self._pod(dep, pod_name, ready=not stuck))
        status = self._status(dep, want, stuck, stalled=now - self.first_seen[name] > self.stall_s)
        if dep.get("status") != status:
            self.kube.set_status("deployments", self.ns, name, status)
            validate_manifest(self.kube.get("deployments", self.ns, name))

    def _pod(self, dep: dict, name: str, *, ready: bool) -> dict:
        template = dep["spec"]["template"]
        [container] = template["spec"]["containers"]
        state = {"running": {}}
        if not ready:
            waiting = f'Back-off pulling image "{container["image"]}"'
            state = {"waiting": {"reason": "ImagePullBackOff", "message": waiting}}
        else:
            version = dep["metadata"]["annotations"][ko.MODEL_VERSION]
            metrics = Metrics(template["metadata"]["labels"][ko.MODEL], version)
            self.replicas[name] = (dep["metadata"]["name"], metrics)
            self.kube.metrics_text[name] = metrics.exposition().decode()
        ip = next(self._ips)
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.ns, "labels": template["metadata"]["labels"]},
            "spec": template["spec"],
            "status": {
                "phase": "Running" if ready else "Pending",
                "podIP": f"10.1.{ip // 250}.{ip % 250 + 1}",
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": "",
                        "ready": ready,
                        "restartCount": 0,
                        "state": state,
                    }
                ],
            },
        }

    def _status(self, dep: dict, want: int, stuck: bool, *, stalled: bool) -> dict:
        name = dep["metadata"]["name"]
        if stuck:
            counts = {"replicas": want, "updatedReplicas": want, "unavailableReplicas": want}
            available = {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"}
            progressing = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}
            if stalled:
                progressing = {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": f'ReplicaSet "{name}" has timed out progressing.',
                }
        else:
            counts = {"replicas": want, "updatedReplicas": want, "readyReplicas": want, "availableReplicas": want}
            available = {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}
            progressing = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
        return {
            "observedGeneration": dep["metadata"]["generation"],
            **{k: v for k, v in counts.items() if v},
            "conditions": [available, progressing],
        }

    def _serve(self) -> None:
        """Every ready pod answers a tick's requests; a misbehaving release fails its share of them."""
        live = {pod["metadata"]["name"] for pod in self.kube.list("pods", self.ns)}
        for gone in set(self.replicas) - live:  # its Deployment was deleted: the garbage collector took it
            del self.replicas[gone]
        for pod_name, (deployment, metrics) in self.replicas.items():
            errors = round(self.per_tick * self.error_share.get(deployment, 0.0))
            metrics.requests["success"].inc(self.per_tick - errors)
            metrics.requests["error"].inc(errors)
            for _ in range(self.per_tick):
                metrics.latency.observe(0.004)
            self.kube.metrics_text[pod_name] = metrics.exposition().decode()


# --- Fixtures -----------------------------------------------------------------------------------
@pytest.fixture
def kube():
    with KubeStandin(token=TOKEN, validate=validate_manifest, namespaces=(NS,)) as standin:
        yield standin
    assert standin.rejected == [], "the worker sent a manifest the API server would refuse"


@pytest.fixture
def cluster(kube):
    with Cluster(kube, NS) as playing:
        yield playing


@pytest.fixture
def prod(api, kube, tmp_path) -> str:
    """An environment on the kubernetes target, made through the API, whose cluster is the stand-in."""
    if not settings.SLIPWAY_REGISTRY:
        pytest.fail("These tests need SLIPWAY_REGISTRY set (any registry address; make test sets it).")
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube.url, TOKEN)
    body = {"name": "prod", "target": "kubernetes", "target_config": {"namespace": NS, "kubeconfig": str(kubeconfig)}}
    response = api.post("/api/v1/environments/", body, format="json")
    assert response.status_code == 201, response.json()
    return "prod"


@pytest.fixture
def model(worker) -> str:
    return f"iris-{uuid.uuid4().hex[:6]}"


def with_image(model: str, version: int) -> str:
    """A build that already succeeded for the version's CPU image, found the way request_build looks for one.

    Returns the image the release must record: the build's repository and tag at its digest.
    """
    mv = ModelVersion.objects.get(model__name=model, version=version)
    ref = image_ref(
        settings.SLIPWAY_REGISTRY,
        model,
        version,
        mv.sha256,
        "cpu",
        runtime_version=runtime_version(),
        base_image=base_image_for("cpu"),
    )
    digest = f"sha256:{hashlib.sha256(ref.encode()).hexdigest()}"
    ImageBuild.objects.create(
        model_version=mv,
        variant="cpu",
        base_image=base_image_for("cpu"),
        runtime_version=runtime_version(),
        registry=settings.SLIPWAY_REGISTRY,
        image_ref=ref,
        digest=digest,
        status=BuildStatus.SUCCEEDED,
        cache_hit=True,
        finished_at=timezone.now(),
    )
    return f"{ref}@{digest}"


# --- What the cluster holds -----------------------------------------------------------------------
def of_release(kube: KubeStandin, key: str, number: int) -> list[str]:
    """Every object of any kind labelled with this release."""
    selector = f"{ko.DEPLOYMENT}={key},{ko.RELEASE}={number}"
    return [f"{kind}/{obj['metadata']['name']}" for kind in KINDS for obj in kube.list(kind, NS, selector)]


def service_selector(kube: KubeStandin, key: str) -> dict:
    return kube.get("services", NS, key)["spec"]["selector"]


def pins(key: str, number: int) -> dict:
    return {ko.DEPLOYMENT: key, ko.RELEASE: str(number)}


def replicas(kube: KubeStandin, key: str, number: int) -> int | None:
    dep = kube.get("deployments", NS, f"{key}-r{number}")
    return None if dep is None else dep["spec"]["replicas"]


def image_of(kube: KubeStandin, key: str, number: int) -> str:
    [container] = kube.get("deployments", NS, f"{key}-r{number}")["spec"]["template"]["spec"]["containers"]
    return container["image"]


def pods(kube: KubeStandin, key: str, number: int) -> int:
    return len(kube.list("pods", NS, f"{ko.DEPLOYMENT}={key},{ko.RELEASE}={number}"))


# --- Tests --------------------------------------------------------------------------------------
def test_deploy_canary_stalled_release_rollback_and_abort(api, prod, model, model_dir, kube, cluster):
    v1, v2, v3 = (upload(api, model, model_dir[k]) for k in ("one", "two", "broken"))
    images = {v: with_image(model, v) for v in (v1, v2, v3)}

    # (1) the first deploy builds nothing (the image exists) and goes straight to all traffic
    first = deploy(api, model, v1, env="prod", config={"replicas": 2})
    deployment_id, key = first["id"], first["key"]
    wait_state(first["rollout"]["id"], "succeeded", timeout=30)
    assert Release.objects.get(deployment_id=deployment_id, number=1).image == images[v1]
    assert image_of(kube, key, 1) == images[v1]
    body = api.get(f"/api/v1/deployments/{deployment_id}/").json()
    endpoint = f"http://{key}.{NS}.svc.cluster.local:80"
    assert body["endpoint"] == endpoint and body["state"] == "serving"
    assert body["current_release"]["image"] == images[v1]
    assert service_selector(kube, key) == pins(key, 1)
    assert replicas(kube, key, 1) == 2
    assert ImageBuild.objects.count() == 3  # the three made above: the engine asked for none

    # (2) a canary of v2 by replica ratio: one new pod and one old behind the Service, then a pause
    second = deploy(api, model, v2, env="prod", plan=CANARY_50_THEN_PAUSE, config={"replicas": 2})
    rollout_id = second["rollout"]["id"]
    paused = wait_state(rollout_id, "paused", timeout=30)
    assert paused.weight == 50
    assert (replicas(kube, key, 1), replicas(kube, key, 2)) == (1, 1)
    assert service_selector(kube, key) == {ko.DEPLOYMENT: key}  # both releases' pods
    wait_for(lambda: (pods(kube, key, 1), pods(kube, key, 2)) == (1, 1), timeout=10, what="one pod of each")
    wait_for(
        lambda: api.get(f"/api/v1/rollouts/{rollout_id}/").json()["status"]["weights"] == {"1": 50, "2": 50},
        timeout=10,
        what="the paused rollout to see traffic split 50/50 by ready pods",
    )
    assert api.post(f"/api/v1/rollouts/{rollout_id}/resume/").status_code == 200
    wait_state(rollout_id, "succeeded", timeout=30)
    # release 1 stays up without traffic (keep_previous), so a rollback to it only re-routes
    assert replicas(kube, key, 1) == 1
    assert service_selector(kube, key) == pins(key, 2)
    assert replicas(kube, key, 2) == 2 and image_of(kube, key, 2) == images[v2]
    assert api.get(f"/api/v1/deployments/{deployment_id}/").json()["endpoint"] == endpoint

    # (3) v3's pods cannot pull their image; the Deployment stalls and the engine rolls back on its own
    cluster.never_available(f"{key}-r3")
    third = deploy(api, model, v3, env="prod")
    ended = wait_state(third["rollout"]["id"], "rolled_back", timeout=30)
    assert f'deployment "{key}-r3" exceeded its progress deadline' in ended.failure_reason
    assert "ImagePullBackOff" in ended.failure_reason
    assert of_release(kube, key, 3) == []
    assert service_selector(kube, key) == pins(key, 2)
    assert replicas(kube, key, 2) == 2
    assert api.get(f"/api/v1/deployments/{deployment_id}/").json()["current_release"]["number"] == 2

    # (4) one click back to release 1: its image again, no build, and the deployment pinned
    builds = ImageBuild.objects.count()
    response = api.post(f"/api/v1/deployments/{deployment_id}/rollback/", {"reason": "v2 drifts"}, format="json")
    assert response.status_code == 200, response.json()
    back = response.json()
    assert back["pinned"] is False and back["rollout"]["release"] == 4 and back["rollout"]["version"] == v1
    wait_state(back["rollout"]["id"], "succeeded", timeout=30)
    assert Release.objects.get(deployment_id=deployment_id, number=4).image == images[v1]
    # release 1's Deployment was still there: the rollback took it over (slot 1) and scaled it back up
    assert Release.objects.get(deployment_id=deployment_id, number=4).slot == 1
    assert of_release(kube, key, 4) == []
    assert image_of(kube, key, 1) == images[v1] and replicas(kube, key, 1) == 2
    assert ImageBuild.objects.count() == builds
    assert service_selector(kube, key) == pins(key, 1)
    assert of_release(kube, key, 2) == []  # a rollback leaves nothing of what it replaced
    assert api.get(f"/api/v1/deployments/{deployment_id}/").json()["pinned"] is True

    # (5) a canary aborted during its pause: everything of the new release goes, release 4 serves alone
    assert api.post(f"/api/v1/deployments/{deployment_id}/unpin/").status_code == 200
    fifth = deploy(api, model, v2, env="prod", plan=CANARY_50_THEN_PAUSE)
    rollout_id = fifth["rollout"]["id"]
    wait_state(rollout_id, "paused", timeout=30)
    assert (replicas(kube, key, 1), replicas(kube, key, 5)) == (1, 1)
    assert image_of(kube, key, 5) == images[v2]  # release 2's image, reused
    response = api.post(f"/api/v1/rollouts/{rollout_id}/abort/", {"reason": "wrong day"}, format="json")
    assert response.json()["state"] == "reverting"
    aborted = wait_state(rollout_id, "aborted", timeout=30)
    assert "wrong day" in aborted.failure_reason
    assert of_release(kube, key, 5) == []
    assert service_selector(kube, key) == pins(key, 1)
    assert replicas(kube, key, 1) == 2
    assert ImageBuild.objects.count() == builds

    # What is left in the cluster is exactly what serves: release 4 (in slot 1) and the stable Service.
    left = sorted((plural, name) for plural, _, name in kube.objects if plural != "pods")
    assert left == [("deployments", f"{key}-r1"), ("services", key)]
    wait_for(lambda: pods(kube, key, 1) == 2, timeout=10, what="release 4 (slot 1) back to two pods")
    assert api.get(f"/api/v1/deployments/{deployment_id}/").json()["current_release"]["number"] == 4
    # The ledger of what served: release 3 never got traffic; the abort gave release 4 all of it back.
    assert ledger_of(deployment_id) == [
        (1, 100, False),
        (1, 50, False),
        (2, 50, False),
        (2, 100, False),
        (4, 100, False),
        (4, 50, False),
        (5, 50, False),
        (4, 100, True),
    ]
    assert verify_chain() is None


@pytest.mark.parametrize(
    "plural",
    [
        pytest.param("deployments", id="before-anything-runs"),
        pytest.param("services", id="after-the-release-runs"),  # its Deployment and pods must go again
    ],
)
def test_a_refusal_by_rbac_fails_the_rollout_with_what_to_grant(api, prod, model, model_dir, kube, cluster, plural):
    v1 = upload(api, model, model_dir["one"])
    image = with_image(model, v1)
    kube.forbidden.add(("create", plural))

    first = deploy(api, model, v1, env="prod")
    ended = wait_state(first["rollout"]["id"], "failed", timeout=30)

    reason = ended.failure_reason
    assert "403 Forbidden" in reason and "RBAC" in reason and "deployments (apps)" in reason
    assert f'cannot create resource "{plural}"' in reason and f"namespace {NS!r}" in reason
    if plural == "services":
        assert ("POST", f"/apis/apps/v1/namespaces/{NS}/deployments") in kube.requests  # it did run
    assert kube.objects == {}  # nothing left behind
    body = api.get(f"/api/v1/deployments/{first['id']}/").json()
    assert (body["state"], body["endpoint"], body["current_release"]) == ("empty", "", None)

    # Once the service account is granted what the message names, the same deploy goes through.
    kube.forbidden.clear()
    again = deploy(api, model, v1, env="prod")
    wait_state(again["rollout"]["id"], "succeeded", timeout=30)
    assert image_of(kube, first["key"], 2) == image


def test_an_analysis_that_sees_errors_in_the_pods_metrics_rolls_back(api, prod, model, model_dir, kube, cluster):
    v1, v2 = (upload(api, model, model_dir[k]) for k in ("one", "two"))
    for v in (v1, v2):
        with_image(model, v)
    first = deploy(api, model, v1, env="prod", config={"replicas": 2})
    key = first["key"]
    wait_state(first["rollout"]["id"], "succeeded", timeout=30)

    cluster.serve_errors(f"{key}-r2", share=0.3)
    analysis = {"duration": "2s", "max_error_rate": 0.05, "min_requests": 20}
    plan = {"strategy": "canary", "steps": [{"set_weight": 50}, {"analysis": analysis}]}
    ended = wait_state(deploy(api, model, v2, env="prod", plan=plan)["rollout"]["id"], "rolled_back", timeout=30)

    assert "Analysis failed: error rate 30.0% > 5.0%" in ended.failure_reason
    failed = [check for check in ended.analysis["checks"] if not check["passed"]]
    assert [(c["name"], c["threshold"]) for c in failed] == [("error_rate", 0.05)]
    assert failed[0]["measured"] == pytest.approx(0.3)
    proxied = [path for method, path in kube.requests if "/proxy/metrics" in path]
    assert len(proxied) >= 2 and all(f"/pods/{key}-r2-" in path for path in proxied)  # a baseline and a look
    assert of_release(kube, key, 2) == []
    assert service_selector(kube, key) == pins(key, 1)
    assert replicas(kube, key, 1) == 2


def test_a_canary_by_replica_ratio_sends_nothing_to_a_release_kept_warm(api, prod, model, model_dir, kube, cluster):
    """The Service of a split selects every pod of the deployment: a release kept warm must not be among them."""
    v1, v2, v3 = (upload(api, model, model_dir[k]) for k in ("one", "two", "one"))
    for v in (v1, v2, v3):
        with_image(model, v)
    first = deploy(api, model, v1, env="prod", config={"replicas": 2})
    deployment_id, key = first["id"], first["key"]
    wait_state(first["rollout"]["id"], "succeeded", timeout=30)
    wait_state(deploy(api, model, v2, env="prod")["rollout"]["id"], "succeeded", timeout=30)
    assert replicas(kube, key, 1) == 1  # kept warm (keep_previous) without traffic: the Service pins release 2
    assert api.get(f"/api/v1/deployments/{deployment_id}/").json()["current_release"]["number"] == 2

    rollout_id = deploy(api, model, v3, env="prod", plan=CANARY_50_THEN_PAUSE)["rollout"]["id"]
    wait_state(rollout_id, "paused", timeout=30)
    assert service_selector(kube, key) == {ko.DEPLOYMENT: key}  # by replica ratio: every pod of the deployment
    assert of_release(kube, key, 1) == [], "release 1 would get a share of the canary's traffic"
    wait_for(
        lambda: api.get(f"/api/v1/rollouts/{rollout_id}/").json()["status"]["weights"] == {"2": 50, "3": 50},
        timeout=10,
        what="the paused rollout to see traffic split 50/50 between releases 2 and 3 only",
    )
    body = api.get(f"/api/v1/deployments/{deployment_id}/").json()
    assert body["current_release"]["number"] == 2
    deployment = Release.objects.get(deployment_id=deployment_id, number=2).deployment
    assert deployment.warm_release_id is None and deployment.warm_until is None
    assert api.post(f"/api/v1/rollouts/{rollout_id}/resume/").status_code == 200
    wait_state(rollout_id, "succeeded", timeout=30)
    assert service_selector(kube, key) == pins(key, 3)
    assert of_release(kube, key, 1) == []


def test_an_api_server_that_stops_answering_ends_the_rollout_and_the_abort_of_it(
    api, prod, model, model_dir, kube, cluster
):
    """Errors the engine retries (5xx, unreachable) are retried up to the plan's progress deadline, not for ever.

    Otherwise the rollout stays active for as long as the cluster is away: no one can deploy,
    and an abort only moves it to reverting, which retries for ever too and cannot be aborted.
    """
    v1, v2 = (upload(api, model, model_dir[k]) for k in ("one", "two"))
    for v in (v1, v2):
        with_image(model, v)
    first = deploy(api, model, v1, env="prod")
    deployment_id = first["id"]
    wait_state(first["rollout"]["id"], "succeeded", timeout=30)
    plan = {**CANARY_50_THEN_PAUSE, "progress_deadline": "3s"}
    rollout_id = deploy(api, model, v2, env="prod", plan=plan)["rollout"]["id"]
    wait_state(rollout_id, "paused", timeout=30)

    kube.fail("GET", "deployments", 503, times=10**6, message="etcdserver: request timed out")
    wait_for(
        lambda: Rollout.objects.get(pk=rollout_id).events.filter(message__startswith="The target did not").exists(),
        timeout=10,
        what="the engine to meet the failing API server",
    )
    # Paused, the engine only watches: it waits for the API server past the deadline, it does not roll back.
    time.sleep(4)
    paused = Rollout.objects.get(pk=rollout_id)
    assert paused.state == "paused" and paused.events.filter(message__startswith="The target did not").count() > 1
    response = api.post(f"/api/v1/rollouts/{rollout_id}/abort/", {"reason": "cluster is down"}, format="json")
    assert response.status_code == 200 and response.json()["state"] == "reverting"
    ended = wait_state(rollout_id, "failed", timeout=30)
    reason = ended.failure_reason
    assert "cluster is down" in reason and "503" in reason and "etcdserver: request timed out" in reason
    assert "after 3 s of retries" in reason and "Release 2 may still run" in reason

    # The deployment is free again: once the API server answers, a new deploy goes through.
    kube._faults.clear()
    again = deploy(api, model, v2, env="prod")
    wait_state(again["rollout"]["id"], "succeeded", timeout=30)
    assert api.get(f"/api/v1/deployments/{deployment_id}/").json()["current_release"]["number"] == 3
    assert service_selector(kube, first["key"]) == pins(first["key"], 3)
    assert of_release(kube, first["key"], 2) == []


def test_a_revert_that_cannot_remove_the_release_still_records_the_traffic_it_moved_back(
    api, prod, model, model_dir, kube, cluster
):
    """The revert routes all traffic back to the previous release, then removes the new one. When the removal
    is refused, the rollout ends failed; the ledger must say what the Service does (release 1 alone), not the
    canary's split that the revert already undid."""
    v1, v2 = (upload(api, model, model_dir[k]) for k in ("one", "two"))
    for v in (v1, v2):
        with_image(model, v)
    first = deploy(api, model, v1, env="prod", config={"replicas": 2})
    deployment_id, key = first["id"], first["key"]
    wait_state(first["rollout"]["id"], "succeeded", timeout=30)
    rollout_id = deploy(api, model, v2, env="prod", plan=CANARY_50_THEN_PAUSE)["rollout"]["id"]
    wait_state(rollout_id, "paused", timeout=30)
    assert [(n, w, still) for n, w, still in ledger_of(deployment_id) if still] == [(1, 50, True), (2, 50, True)]

    kube.forbidden.add(("delete", "deployments"))
    assert api.post(f"/api/v1/rollouts/{rollout_id}/abort/", {"reason": "wrong day"}, format="json").status_code == 200
    ended = wait_state(rollout_id, "failed", timeout=30)
    assert "403 Forbidden" in ended.failure_reason and "Release 2 may still run" in ended.failure_reason
    assert service_selector(kube, key) == pins(key, 1)  # the traffic did go back
    assert [(n, w) for n, w, still in ledger_of(deployment_id) if still] == [(1, 100)]
    assert ended.weight == 0
