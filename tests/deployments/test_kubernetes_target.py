"""The kubernetes target through the official client, against the API server stand-in.

Every manifest the target sends is validated by the stand-in before it is stored
(kube_schemas.validate_manifest: kubernetes-validate strict, and the HTTPRoute schema);
the `kube` fixture fails a test that had one refused. The tests play the Deployment
controller and the kubelet: they write status and pods as those would.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import uuid
from pathlib import Path

import pytest

from deployments.targets import (
    DeploymentRef,
    ReleaseSpec,
    RuntimeSettings,
    TargetError,
    get_target,
)
from deployments.targets.kubernetes import KubernetesTarget, validate_config
from tests.deployments.kube_schemas import validate_manifest
from tests.deployments.kube_standin import KubeStandin
from tests.deployments.kube_standin import write_kubeconfig as standin_kubeconfig
from tests.models_zoo import MLP_SIGNATURE

NS = "ml"
TOKEN = f"tok-{uuid.uuid4().hex}"  # in the kubeconfig only: must never show up in a message or a log record
SELECTOR = "app.kubernetes.io/managed-by=slipway,slipway.dev/deployment=iris-prod"
KINDS = ("deployments", "services", "ingresses", "httproutes", "pods")


# --- Fixtures ----------------------------------------------------------------------------------------
@pytest.fixture
def kube():
    with KubeStandin(token=TOKEN, validate=validate_manifest, namespaces=(NS,)) as standin:
        yield standin
    assert standin.rejected == [], "the target sent a manifest the API server would refuse"


def write_kubeconfig(path: Path, server: str, token: str = TOKEN) -> Path:
    return standin_kubeconfig(path, server, token)


@pytest.fixture
def kubeconfig(kube, tmp_path) -> Path:
    return write_kubeconfig(tmp_path / "kubeconfig", kube.url)


@pytest.fixture
def target() -> KubernetesTarget:
    return KubernetesTarget()


def ref(kubeconfig: Path, **settings) -> DeploymentRef:
    config = {"namespace": NS, "kubeconfig": str(kubeconfig), **settings}
    return DeploymentRef(id=7, key="iris-prod", model_name="iris", environment="prod", target_config=config)


def release(number: int, **settings) -> ReleaseSpec:
    return ReleaseSpec(
        number=number,
        model_name="iris",
        model_version=number,
        artifact_sha256="ab" * 32,
        signature=MLP_SIGNATURE,
        settings=RuntimeSettings(**settings),
        image=f"registry.example.com/slipway/iris:v{number}@sha256:{'c' * 64}",
    )


# --- Playing the Deployment controller and the kubelet ---------------------------------------------------
def controller(kube, name, *, observed=None, replicas=0, updated=0, ready=0, available=0, deadline=False):
    """Write status as the Deployment controller does: zero counts are left out, as the API leaves them."""
    dep = kube.get("deployments", NS, name)
    counts = {"replicas": replicas, "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": available}
    progressing = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
    if deadline:
        progressing = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    status = {
        "observedGeneration": dep["metadata"]["generation"] if observed is None else observed,
        **{k: v for k, v in counts.items() if v},
        "conditions": [progressing],
    }
    kube.set_status("deployments", NS, name, status)
    validate_manifest(kube.get("deployments", NS, name))


def pod(kube, number, index, *, ready=True, waiting=None, unschedulable=None, restarts=0) -> str:
    """A pod made from the release's pod template, as its ReplicaSet and the kubelet would."""
    template = kube.get("deployments", NS, f"iris-prod-r{number}")["spec"]["template"]
    name = f"iris-prod-r{number}-5d8f7c-{index}"
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    container = {"name": "runtime", "image": "x", "imageID": "", "ready": ready, "restartCount": restarts}
    container["state"] = {"waiting": {"reason": waiting[0], "message": waiting[1]}} if waiting else {"running": {}}
    status = {"phase": "Running", "podIP": f"10.1.{number}.{index}", "conditions": conditions}
    status["containerStatuses"] = [container]
    if unschedulable:
        status = {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
            ],
        }
    kube.put_pod(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": template["metadata"]["labels"]},
            "spec": template["spec"],
            "status": status,
        }
    )
    return name


def sent(kube, kind: str) -> list[dict]:
    return [m for m in kube.sent if m["kind"] == kind]


def methods(kube, plural: str) -> list[str]:
    return [method for method, path in kube.requests if f"/{plural}" in path]


# --- apply --------------------------------------------------------------------------------------------
def test_get_target_gives_the_kubernetes_target():
    assert isinstance(get_target("kubernetes"), KubernetesTarget)


def test_apply_creates_a_valid_deployment_with_labels_probes_resources_and_a_gpu(kube, kubeconfig, target):
    r1 = release(
        1, cpu_request="500m", cpu_limit="2", memory_request="1Gi", memory_limit="2Gi", gpus=1, max_batch_size=32
    )
    target.apply(ref(kubeconfig, image_pull_secret="regcred"), r1, 2)

    [dep] = kube.list("deployments", NS)
    assert sent(kube, "Deployment") == [m for m in kube.sent if m["metadata"]["name"] == "iris-prod-r1"]
    labels = {
        "app.kubernetes.io/name": "iris",
        "app.kubernetes.io/managed-by": "slipway",
        "slipway.dev/deployment": "iris-prod",
        "slipway.dev/model": "iris",
        "slipway.dev/release": "1",
    }
    assert dep["metadata"]["name"] == "iris-prod-r1"
    assert dep["metadata"]["labels"] == labels
    spec = dep["spec"]
    assert spec["replicas"] == 2
    assert spec["selector"] == {"matchLabels": {"slipway.dev/deployment": "iris-prod", "slipway.dev/release": "1"}}
    assert spec["template"]["metadata"]["labels"] == labels  # no track label: changing it would restart pods
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["progressDeadlineSeconds"] == 600
    assert 0 < spec["revisionHistoryLimit"] <= 3
    pod_spec = spec["template"]["spec"]
    # SIGTERM waits until the pod is out of the Service's endpoints, then the runtime drains for 25 s.
    [container] = pod_spec["containers"]
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and int(sleep[1]) >= 3
    assert pod_spec["terminationGracePeriodSeconds"] > int(sleep[1]) + 25
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["imagePullSecrets"] == [{"name": "regcred"}]
    [container] = pod_spec["containers"]
    assert container["image"] == r1.image
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"RUNTIME_MAX_BATCH_SIZE": "32", "RUNTIME_MAX_DELAY_MS": "2"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # a slow model load is not killed
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "2Gi", "nvidia.com/gpu": "1"},
    }


def test_apply_without_resources_or_gpus_sets_none(kube, kubeconfig, target):
    target.apply(ref(kubeconfig), release(1), 1)
    pod_spec = kube.get("deployments", NS, "iris-prod-r1")["spec"]["template"]["spec"]
    assert "resources" not in pod_spec["containers"][0]
    assert "imagePullSecrets" not in pod_spec and "tolerations" not in pod_spec


def test_a_second_apply_updates_the_deployment_instead_of_adding_one(kube, kubeconfig, target):
    deployment = ref(kubeconfig)
    target.apply(deployment, release(1), 1)
    target.apply(deployment, release(1), 3)
    target.apply(deployment, release(1), 3)  # a repeat after a crash changes nothing

    [dep] = kube.list("deployments", NS)
    assert dep["spec"]["replicas"] == 3
    assert dep["metadata"]["generation"] == 2
    assert methods(kube, "deployments").count("POST") == 1
    assert methods(kube, "deployments").count("PUT") == 2


def test_a_conflict_on_update_is_read_again_and_retried(kube, kubeconfig, target):
    deployment = ref(kubeconfig)
    target.apply(deployment, release(1), 1)
    kube.interfere("deployments", "iris-prod-r1", times=2)  # another writer changes it right after each read

    target.apply(deployment, release(1), 4)

    dep = kube.get("deployments", NS, "iris-prod-r1")
    assert dep["spec"]["replicas"] == 4
    assert dep["metadata"]["annotations"]["example.com/other-writer"] == "1"  # the other writer's work is kept
    assert methods(kube, "deployments").count("PUT") == 3  # two 409 Conflicts, then success


def test_a_conflict_that_never_ends_is_a_retryable_error(kube, kubeconfig, target):
    deployment = ref(kubeconfig)
    target.apply(deployment, release(1), 1)
    kube.interfere("deployments", "iris-prod-r1", times=100)
    with pytest.raises(TargetError, match="409 Conflict") as failure:
        target.apply(deployment, release(1), 2)
    assert failure.value.retryable


def test_an_object_slipway_does_not_manage_is_left_alone(kube, kubeconfig, target):
    kube.objects[("deployments", NS, "iris-prod-r1")] = theirs = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "iris-prod-r1", "namespace": NS, "resourceVersion": "1", "labels": {"team": "other"}},
        "spec": {"selector": {"matchLabels": {"team": "other"}}, "template": {}},
    }
    with pytest.raises(TargetError, match="Slipway does not manage it") as failure:
        target.apply(ref(kubeconfig), release(1), 1)
    assert not failure.value.retryable
    assert kube.get("deployments", NS, "iris-prod-r1") == theirs
    assert "PUT" not in methods(kube, "deployments")


def test_a_release_without_an_image_is_refused(kube, kubeconfig, target):
    no_image = dataclasses.replace(release(1), image=None)
    with pytest.raises(TargetError, match="no image"):
        target.apply(ref(kubeconfig), no_image, 1)
    assert kube.requests == []


# --- status ----------------------------------------------------------------------------------------------
def test_status_follows_a_rollout_as_kubectl_judges_it(kube, kubeconfig, target):
    deployment = ref(kubeconfig)
    target.apply(deployment, release(1), 3)
    name = "iris-prod-r1"

    def judged():
        r = target.status(deployment).releases[1]
        return r.done, r.failed, r.message

    waiting = f'Waiting for deployment "{name}" rollout to finish: '
    # Before the controller has seen the Deployment: observedGeneration is absent.
    assert judged() == (False, None, "Waiting for deployment spec update to be observed...")
    controller(kube, name, replicas=1, updated=1)
    assert judged() == (False, None, f"{waiting}1 out of 3 new replicas have been updated...")
    controller(kube, name, replicas=4, updated=3, ready=3, available=3)
    assert judged() == (False, None, f"{waiting}1 old replicas are pending termination...")
    controller(kube, name, replicas=3, updated=3, ready=1, available=1)
    assert judged() == (False, None, f"{waiting}1 of 3 updated replicas are available...")
    controller(kube, name, replicas=3, updated=3, ready=3, available=3)
    assert judged() == (True, None, f'deployment "{name}" successfully rolled out')

    target.apply(deployment, release(1), 5)  # a new spec: generation 2, observed still 1
    assert judged() == (False, None, "Waiting for deployment spec update to be observed...")


def test_status_counts_ready_pods_and_lists_replicas(kube, kubeconfig, target):
    deployment = ref(kubeconfig)
    target.apply(deployment, release(1), 3)
    controller(kube, "iris-prod-r1", replicas=3, updated=3, ready=2, available=2)
    names = [pod(kube, 1, 0), pod(kube, 1, 1), pod(kube, 1, 2, ready=False, restarts=2)]

    r = target.status(deployment).releases[1]

    assert (r.desired, r.updated, r.ready, r.available) == (3, 3, 2, 2)
    assert sorted((p.name, p.ready, p.restarts) for p in r.replicas) == [
        (names[0], True, 0),
        (names[1], True, 0),
        (names[2], False, 2),
    ]
    assert r.warnings == []


def test_a_progress_deadline_exceeded_fails_the_release(kube, kubeconfig, target):
    deployment = ref(kubeconfig, progress_deadline_s=120)
    target.apply(deployment, release(1), 2)
    assert kube.get("deployments", NS, "iris-prod-r1")["spec"]["progressDeadlineSeconds"] == 120
    controller(kube, "iris-prod-r1", replicas=2, updated=2, deadline=True)

    r = target.status(deployment).releases[1]

    assert not r.done
    assert r.failed == 'deployment "iris-prod-r1" exceeded its progress deadline'


def test_pods_that_cannot_pull_crash_or_be_scheduled_become_warnings(kube, kubeconfig, target):
    deployment = ref(kubeconfig)
    target.apply(deployment, release(1), 3)
    controller(kube, "iris-prod-r1", replicas=3, updated=3)
    pull = pod(kube, 1, 0, ready=False, waiting=("ImagePullBackOff", 'Back-off pulling image "registry/iris:v1"'))
    crash = pod(kube, 1, 1, ready=False, restarts=5, waiting=("CrashLoopBackOff", "back-off 2m40s restarting"))
    pending = pod(kube, 1, 2, ready=False, unschedulable="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")

    r = target.status(deployment).releases[1]

    assert not r.done and r.ready == 0
    assert sorted(r.warnings) == sorted(
        [
            f'pod {pull}: ImagePullBackOff: Back-off pulling image "registry/iris:v1"',
            f"pod {crash}: CrashLoopBackOff: back-off 2m40s restarting",
            f"pod {pending}: Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        ]
    )
    by_name = {p.name: p for p in r.replicas}
    assert by_name[crash].restarts == 5 and "CrashLoopBackOff" in by_name[crash].warning


def test_scaling_to_zero_keeps_the_deployment(kube, kubeconfig, target):
    deployment = ref(kubeconfig)
    target.apply(deployment, release(1), 2)
    target.apply(deployment, release(1), 0)
    controller(kube, "iris-prod-r1")  # every count is zero: the API leaves them all out

    r = target.status(deployment).releases[1]

    assert kube.get("deployments", NS, "iris-prod-r1")["spec"]["replicas"] == 0
    assert (r.desired, r.updated, r.ready, r.available, r.done) == (0, 0, 0, 0, True)


def test_status_of_a_deployment_with_nothing_yet(kube, kubeconfig, target):
    status = target.status(ref(kubeconfig))
    assert (status.endpoint, status.weights, status.releases) == (None, {}, {})


# --- route ----------------------------------------------------------------------------------------------
def test_route_to_one_release_pins_the_selector_and_to_two_selects_both(kube, kubeconfig, target):
    deployment = ref(kubeconfig)
    assert target.exact_weights(deployment) is False
    target.apply(deployment, release(1), 3)
    target.apply(deployment, release(2), 1)

    endpoint = target.route(deployment, {1: 100, 2: 0})

    assert endpoint == "http://iris-prod.ml.svc.cluster.local:80"
    service = kube.get("services", NS, "iris-prod")
    assert service["spec"]["selector"] == {"slipway.dev/deployment": "iris-prod", "slipway.dev/release": "1"}
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert target.status(deployment).weights == {1: 100}
    assert track(kube, 1) == "stable" and track(kube, 2) == "canary"

    target.route(deployment, {1: 75, 2: 25})

    moved = kube.get("services", NS, "iris-prod")
    assert moved["spec"]["selector"] == {"slipway.dev/deployment": "iris-prod"}
    assert moved["spec"]["clusterIP"] == service["spec"]["clusterIP"]
    assert target.status(deployment).weights == {1: 75, 2: 25}  # no pod ready yet: by desired replicas
    for index in range(3):
        pod(kube, 1, index)
    pod(kube, 2, 0)
    pod(kube, 2, 1)
    assert target.status(deployment).weights == {1: 60, 2: 40}  # by ready replicas, as the Service balances

    target.route(deployment, {1: 0, 2: 100})

    assert track(kube, 1) == "canary" and track(kube, 2) == "stable"
    # The track label is on the Deployment only: its pods are not restarted.
    assert kube.get("deployments", NS, "iris-prod-r2")["metadata"]["generation"] == 1
    target.apply(deployment, release(2), 2)  # apply keeps the track label route() set
    assert track(kube, 2) == "stable"


def track(kube, number: int) -> str | None:
    return kube.get("deployments", NS, f"iris-prod-r{number}")["metadata"]["labels"].get("slipway.dev/track")


def test_route_refuses_weights_that_do_not_sum_to_100(kube, kubeconfig, target):
    with pytest.raises(TargetError, match="sum to 100"):
        target.route(ref(kubeconfig), {1: 50, 2: 20})
    assert kube.requests == []


def test_route_refuses_a_release_that_does_not_run(kube, kubeconfig, target):
    deployment = ref(kubeconfig)
    target.apply(deployment, release(1), 1)
    with pytest.raises(TargetError, match=r"release\(s\) \[2\].*Apply them first"):
        target.route(deployment, {1: 50, 2: 50})
    assert kube.list("services") == []


def test_with_a_gateway_the_httproute_carries_exact_weights(kube, kubeconfig, target):
    deployment = ref(kubeconfig, gateway={"name": "public", "namespace": "gateways"}, ingress_host="iris.example.com")
    assert target.exact_weights(deployment) is True
    target.apply(deployment, release(1), 2)
    target.apply(deployment, release(2), 2)

    endpoint = target.route(deployment, {1: 95, 2: 5})

    assert endpoint == "http://iris.example.com"
    for number in (1, 2):
        own = kube.get("services", NS, f"iris-prod-r{number}")
        assert own["spec"]["selector"] == {"slipway.dev/deployment": "iris-prod", "slipway.dev/release": str(number)}
    route = kube.get("httproutes", NS, "iris-prod")
    assert sent(kube, "HTTPRoute"), "the HTTPRoute went through the schema check"
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "gateways"}
    ]
    assert route["spec"]["hostnames"] == ["iris.example.com"]
    [rule] = route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/v2/models/iris"}}]
    assert [(b["name"], b["port"], b["weight"]) for b in rule["backendRefs"]] == [
        ("iris-prod-r1", 80, 95),
        ("iris-prod-r2", 80, 5),
    ]
    status = target.status(deployment)
    assert status.weights == {1: 95, 2: 5}
    assert status.endpoint == "http://iris.example.com"
    assert kube.list("ingresses") == []

    target.route(deployment, {1: 0, 2: 100})
    assert target.status(deployment).weights == {2: 100}
    assert track(kube, 2) == "stable"


def test_an_ingress_is_made_when_configured(kube, kubeconfig, target):
    deployment = ref(kubeconfig, ingress_host="iris.example.com", ingress_class="nginx", service_port=8000)
    target.apply(deployment, release(1), 1)

    assert target.route(deployment, {1: 100}) == "http://iris.example.com"

    [ingress] = kube.list("ingresses", NS)
    assert ingress["metadata"]["name"] == "iris-prod"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == "iris.example.com"
    [path] = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/v2/models/iris", "Prefix")
    assert path["backend"] == {"service": {"name": "iris-prod", "port": {"number": 8000}}}
    assert kube.get("services", NS, "iris-prod")["spec"]["ports"][0]["port"] == 8000
    assert target.status(deployment).endpoint == "http://iris.example.com"

    # The environment drops its ingress: the next route removes it.
    assert target.route(ref(kubeconfig, service_port=8000), {1: 100}) == "http://iris-prod.ml.svc.cluster.local:8000"
    assert kube.list("ingresses") == []


@pytest.mark.parametrize("routing", [{}, {"gateway": {"name": "public"}}], ids=["ingress", "gateway"])
def test_models_in_one_environment_share_its_host_each_on_its_own_path(kube, kubeconfig, target, routing):
    config = {"namespace": NS, "kubeconfig": str(kubeconfig), "ingress_host": "models.example.com", **routing}
    iris = DeploymentRef(id=7, key="iris-prod", model_name="iris", environment="prod", target_config=config)
    fraud = DeploymentRef(id=8, key="fraud-prod", model_name="fraud", environment="prod", target_config=config)
    for deployment in (iris, fraud):
        target.apply(deployment, release(1), 1)
        assert target.route(deployment, {1: 100}) == "http://models.example.com"

    kind = "httproutes" if routing else "ingresses"
    claims = {}
    for route in kube.list(kind, NS):
        if routing:
            [rule] = route["spec"]["rules"]
            [backend] = rule["backendRefs"]
            claims[rule["matches"][0]["path"]["value"]] = backend["name"]
        else:
            [path] = route["spec"]["rules"][0]["http"]["paths"]
            claims[path["path"]] = path["backend"]["service"]["name"]
    # Each model's requests (/v2/models/<name>/infer, .../ready, metadata) reach its own Service, not the other's.
    prefix = {"iris": "iris-prod", "fraud": "fraud-prod"}
    assert {path: name.removesuffix("-r1") for path, name in claims.items()} == {
        f"/v2/models/{model}": key for model, key in prefix.items()
    }


def test_a_cluster_without_the_gateway_api(kube, kubeconfig, target):
    del kube.resources[("gateway.networking.k8s.io/v1", "httproutes")]
    kube.forbidden.add(("list", "ingresses"))  # and no RBAC for ingresses: neither is asked for
    plain = ref(kubeconfig)
    target.apply(plain, release(1), 1)
    target.route(plain, {1: 100})
    target.teardown(plain)
    assert kube.objects == {}

    gateway = ref(kubeconfig, gateway={"name": "public"}, ingress_host="iris.example.com")
    target.apply(gateway, release(1), 1)
    with pytest.raises(TargetError, match="install the Gateway API") as failure:
        target.route(gateway, {1: 100})
    assert not failure.value.retryable


# --- metrics ---------------------------------------------------------------------------------------------
def test_metrics_are_read_from_every_ready_pod_through_the_pod_proxy(kube, kubeconfig, target):
    deployment = ref(kubeconfig)
    target.apply(deployment, release(1), 3)
    target.apply(deployment, release(2), 1)
    ready = [pod(kube, 1, 0), pod(kube, 1, 1)]
    pod(kube, 1, 2, ready=False)
    other = pod(kube, 2, 0)
    for name in [*ready, other]:
        kube.metrics_text[name] = f'slipway_inference_requests_total{{outcome="success",pod="{name}"}} 7\n'

    texts = target.metrics(deployment, 1)

    assert sorted(texts) == sorted(kube.metrics_text[name] for name in ready)
    proxied = [path for method, path in kube.requests if "/proxy/" in path]
    assert len(proxied) == 2 and all("%3A8080/proxy/metrics" in path for path in proxied)


# --- remove and teardown -----------------------------------------------------------------------------------
def test_remove_deletes_everything_of_the_release_and_only_that(kube, kubeconfig, target):
    deployment = ref(kubeconfig, gateway={"name": "public"}, ingress_host="iris.example.com")
    target.apply(deployment, release(1), 1)
    target.apply(deployment, release(2), 1)
    target.route(deployment, {1: 100})
    pod(kube, 1, 0)
    pod(kube, 2, 0)

    target.remove(deployment, 2)
    target.remove(deployment, 2)  # already gone: still a success

    release_two = "slipway.dev/release=2"
    assert all(kube.list(kind, NS, release_two) == [] for kind in KINDS)
    assert kube.get("deployments", NS, "iris-prod-r2") is None and kube.get("services", NS, "iris-prod-r2") is None
    assert list(target.status(deployment).releases) == [1]
    assert kube.get("deployments", NS, "iris-prod-r1") and kube.list("pods", NS, "slipway.dev/release=1")


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"ingress_host": "iris.example.com"}, id="ingress"),
        pytest.param({"gateway": {"name": "public"}, "ingress_host": "iris.example.com"}, id="gateway"),
    ],
)
def test_teardown_leaves_nothing_behind(kube, kubeconfig, target, settings):
    deployment = ref(kubeconfig, **settings)
    for number in (1, 2):
        target.apply(deployment, release(number), 1)
        pod(kube, number, 0)
    target.route(deployment, {1: 50, 2: 50})
    assert kube.list("ingresses" if "gateway" not in settings else "httproutes", NS, SELECTOR)

    target.teardown(deployment)
    target.teardown(deployment)  # twice: nothing to do, no error

    assert all(kube.list(kind, NS, SELECTOR) == [] for kind in KINDS)
    names = ("iris-prod", "iris-prod-r1", "iris-prod-r2")
    assert all(kube.get(kind, NS, name) is None for kind in KINDS for name in names)
    assert kube.objects == {}
    status = target.status(deployment)
    assert (status.endpoint, status.releases) == (None, {})


# --- errors ----------------------------------------------------------------------------------------------
def test_refused_credentials_are_not_retried_and_the_token_never_shows(kube, tmp_path, target, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = f"wrong-{uuid.uuid4().hex}"
    deployment = ref(write_kubeconfig(tmp_path / "stale-kubeconfig", kube.url, token=wrong))

    with pytest.raises(TargetError, match="401 Unauthorized") as failure:
        target.apply(deployment, release(1), 1)

    assert not failure.value.retryable
    assert "stale-kubeconfig" in str(failure.value)
    assert_never_shown([wrong, TOKEN], failure.value, caplog)


def test_a_kubeconfig_changed_on_disk_is_read_again(kube, tmp_path, target):
    path = write_kubeconfig(tmp_path / "kubeconfig", kube.url, token="expired")
    deployment = ref(path)
    with pytest.raises(TargetError, match="401"):
        target.status(deployment)
    write_kubeconfig(path, kube.url)
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 1_000_000_000))
    assert target.status(deployment).releases == {}


def test_forbidden_says_which_rbac_is_needed(kube, kubeconfig, target, caplog):
    caplog.set_level(logging.DEBUG)
    kube.forbidden.add(("create", "deployments"))

    with pytest.raises(TargetError) as failure:
        target.apply(ref(kubeconfig), release(1), 1)

    message = str(failure.value)
    assert not failure.value.retryable
    assert "403 Forbidden" in message and "RBAC" in message and "deployments (apps)" in message
    assert 'cannot create resource "deployments"' in message  # what the API server said
    assert_never_shown([TOKEN], failure.value, caplog)


@pytest.mark.parametrize("code", [500, 503, 429])
def test_server_errors_are_retryable(kube, kubeconfig, target, code):
    deployment = ref(kubeconfig)
    kube.fail("GET", "deployments", code)

    with pytest.raises(TargetError, match=str(code)) as failure:
        target.status(deployment)

    assert failure.value.retryable
    assert target.status(deployment).releases == {}  # the next try goes through


def test_a_token_a_server_echoes_back_is_redacted(kube, kubeconfig, target, caplog):
    kube.fail("GET", "deployments", 502, message=f"proxy: upstream rejected 'Authorization: Bearer {TOKEN}'")

    with pytest.raises(TargetError, match=r"Authorization: \[redacted\]") as failure:
        target.status(ref(kubeconfig))

    assert failure.value.retryable
    assert_never_shown([TOKEN], failure.value, caplog)


def test_an_unreachable_api_server_is_retryable(tmp_path, target, caplog):
    caplog.set_level(logging.DEBUG)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    deployment = ref(write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}"))

    with pytest.raises(TargetError, match="Cannot reach the Kubernetes API server") as failure:
        target.status(deployment)

    assert failure.value.retryable
    assert_never_shown([TOKEN], failure.value, caplog)


def test_a_missing_namespace_says_so(kube, kubeconfig, target):
    with pytest.raises(TargetError, match="Namespace 'absent' does not exist") as failure:
        target.apply(ref(kubeconfig, namespace="absent"), release(1), 1)
    assert not failure.value.retryable
    assert "kubectl create namespace absent" in str(failure.value)


def test_a_broken_kubeconfig_or_missing_context_never_quotes_the_file(tmp_path, target, caplog):
    caplog.set_level(logging.DEBUG)
    broken = tmp_path / "broken"
    broken.write_text(f"apiVersion: v1\nusers:\n- name: x\n  user: {{token: {TOKEN}\n")  # unclosed flow mapping
    with pytest.raises(TargetError, match="Cannot use the kubeconfig file") as failure:
        target.status(ref(broken))
    assert_never_shown([TOKEN], failure.value, caplog)

    good = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9")
    with pytest.raises(TargetError, match="context 'elsewhere'") as failure:
        target.status(ref(good, context="elsewhere"))
    assert_never_shown([TOKEN], failure.value, caplog)

    with pytest.raises(TargetError, match="cannot be read"):
        target.status(ref(tmp_path / "nowhere"))


def test_in_cluster_outside_a_cluster_says_to_use_a_kubeconfig(target):
    deployment = DeploymentRef(1, "iris-prod", "iris", "prod", target_config={"namespace": NS, "in_cluster": True})
    with pytest.raises(TargetError, match="set kubeconfig instead"):
        target.status(deployment)


def assert_never_shown(secrets: list[str], error: Exception, caplog) -> None:
    shown = [str(error), repr(error), caplog.text, *(str(r.args) for r in caplog.records)]
    assert not [s for s in secrets for text in shown if s in text]


# --- settings ----------------------------------------------------------------------------------------------
def test_validate_config_fills_in_defaults():
    assert validate_config({"namespace": "ml", "kubeconfig": "/etc/slipway/kubeconfig"}) == {
        "namespace": "ml",
        "kubeconfig": "/etc/slipway/kubeconfig",
        "context": None,
        "in_cluster": False,
        "image_pull_secret": None,
        "ingress_host": None,
        "ingress_class": None,
        "gateway": None,
        "progress_deadline_s": 600,
        "service_port": 80,
    }
    assert validate_config({"namespace": "ml", "in_cluster": True})["in_cluster"] is True


def test_validate_config_names_every_bad_field():
    with pytest.raises(ValueError) as failure:
        validate_config(
            {
                "namespace": "ML_Prod",
                "kubeconfig": "/k",
                "in_cluster": True,
                "image_pull_secret": "Bad Secret",
                "ingress_host": "10.0.0.1",
                "gateway": {"name": "public", "port": 80},
                "progress_deadline_s": 0,
                "service_port": 70000,
                "replicas": 3,
            }
        )
    message = str(failure.value)
    for field in (
        "namespace:",
        "kubeconfig / in_cluster",
        "image_pull_secret:",
        "ingress_host:",
        "gateway:",
        "progress_deadline_s:",
        "service_port:",
        "replicas: unknown setting",
    ):
        assert field in message, field


@pytest.mark.parametrize(
    ("config", "complaint"),
    [
        ({}, "namespace: required"),
        ({"namespace": "ml"}, "set exactly one"),
        ({"namespace": "ml", "in_cluster": "yes"}, "in_cluster: 'yes'"),
        ({"namespace": "ml", "in_cluster": True, "context": "c"}, "context: only applies with kubeconfig"),
        ({"namespace": "ml", "kubeconfig": "/k", "ingress_class": "nginx"}, "set ingress_host too"),
        ({"namespace": "ml", "kubeconfig": "/k", "gateway": {"name": "gw"}}, "gateway: needs ingress_host"),
        ({"namespace": "ml", "kubeconfig": "/k", "service_port": True}, "service_port: True"),
        ("namespace=ml", "must be an object"),
    ],
)
def test_validate_config_refuses(config, complaint):
    with pytest.raises(ValueError, match=complaint):
        validate_config(config)


def test_bad_settings_reach_the_engine_as_a_target_error(target):
    deployment = DeploymentRef(1, "iris-prod", "iris", "prod", target_config={"namespace": "ml"})
    with pytest.raises(TargetError, match="Environment 'prod': invalid kubernetes target settings") as failure:
        target.status(deployment)
    assert not failure.value.retryable
