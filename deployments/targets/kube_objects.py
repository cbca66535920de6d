"""What the kubernetes target writes and how it reads what it finds: pure functions over dicts.

Manifests are plain dicts in the API's own camelCase, the form the official client
sends unchanged and the form `kubernetes-validate` checks in the tests. Reading goes
the same way (objects turned into dicts), so the rollout judgement below is a pure
function of what the API server returned. No Django, no client calls here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deployments.targets.base import DeploymentRef, ReleaseSpec, ReleaseStatus, ReplicaStatus

MANAGED_BY = "app.kubernetes.io/managed-by"
APP_NAME = "app.kubernetes.io/name"
DEPLOYMENT = "slipway.dev/deployment"
MODEL = "slipway.dev/model"
RELEASE = "slipway.dev/release"
TRACK = "slipway.dev/track"
MODEL_VERSION = "slipway.dev/model-version"
ARTIFACT_SHA256 = "slipway.dev/artifact-sha256"

GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSION = "v1"
HTTPROUTES = "httproutes"

CONTAINER_PORT = 8080  # the runtime image listens here (RUNTIME_PORT in docker/runtime.Dockerfile)
RUNTIME_UID = 10001  # the image's USER
# A pod being stopped stays in its Service's endpoints for a few seconds (kube-proxy and ingress controllers
# learn of it on their own schedule), while the runtime, once SIGTERM comes, refuses new requests and exits as
# soon as those in flight are answered: the requests sent meanwhile would be refused. So SIGTERM waits.
PRE_STOP_SLEEP_S = 5
# Then the runtime drains for up to 25 s (RUNTIME_DRAIN_TIMEOUT_S); the kubelet must wait for both.
TERMINATION_GRACE_S = 40
# Readiness stays 503 while the model loads: the startup probe gives a large model 10 minutes
# before liveness may restart the container.
STARTUP_PERIOD_S, STARTUP_FAILURES = 5, 120
REVISION_HISTORY = 2

# Pod states kubectl surfaces while a rollout is not done (see shared/REFERENCE.md).
WAITING_WARNINGS = (
    "ImagePullBackOff",
    "ErrImagePull",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
)


@dataclass(frozen=True)
class Settings:
    """The environment's target settings, validated (see kubernetes.validate_config)."""

    namespace: str
    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False
    image_pull_secret: str | None = None
    ingress_host: str | None = None
    ingress_class: str | None = None
    gateway: dict | None = None  # {"name": ..., "namespace"?: ...}
    progress_deadline_s: int = 600
    service_port: int = 80


# --- Names and labels --------------------------------------------------------------------
def release_name(deployment: DeploymentRef, release: int) -> str:
    return f"{deployment.key}-r{release}"


def labels(deployment: DeploymentRef, release: int | None = None) -> dict[str, str]:
    """The labels every object carries; a release's objects also carry its number."""
    result = {
        APP_NAME: deployment.model_name,
        MANAGED_BY: "slipway",
        DEPLOYMENT: deployment.key,
        MODEL: deployment.model_name,
    }
    if release is not None:
        result[RELEASE] = str(release)
    return result


def selector(deployment: DeploymentRef) -> str:
    """The label selector of everything Slipway made for `deployment`."""
    return f"{MANAGED_BY}=slipway,{DEPLOYMENT}={deployment.key}"


def release_number(obj: dict) -> int | None:
    value = (obj.get("metadata", {}).get("labels") or {}).get(RELEASE, "")
    return int(value) if value.isdigit() else None


def _meta(name: str, namespace: str, obj_labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": obj_labels}
    if annotations:
        meta["annotations"] = annotations
    return meta


# --- Manifests -----------------------------------------------------------------------------
def deployment_manifest(deployment: DeploymentRef, release: ReleaseSpec, replicas: int, s: Settings) -> dict:
    """One apps/v1 Deployment per release; its pods carry no track label (changing it would restart them)."""
    pod_labels = labels(deployment, release.number)
    rs = release.settings
    pod_spec: dict[str, Any] = {
        "containers": [_container(release)],
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNTIME_UID,
            "runAsGroup": RUNTIME_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "automountServiceAccountToken": False,  # the runtime never talks to the API server
    }
    if s.image_pull_secret:
        pod_spec["imagePullSecrets"] = [{"name": s.image_pull_secret}]
    if rs.gpus > 0:
        # GPU nodes are commonly tainted so that only pods asking for GPUs land there.
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(
            release_name(deployment, release.number),
            s.namespace,
            dict(pod_labels),
            {MODEL_VERSION: str(release.model_version), ARTIFACT_SHA256: release.artifact_sha256},
        ),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {DEPLOYMENT: deployment.key, RELEASE: str(release.number)}},
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "progressDeadlineSeconds": s.progress_deadline_s,
            "revisionHistoryLimit": REVISION_HISTORY,
        },
    }


def _container(release: ReleaseSpec) -> dict:
    rs = release.settings

    def probe(path: str, period: int, failures: int) -> dict:
        return {
            "httpGet": {"path": path, "port": "http"},
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": failures,
        }

    container: dict[str, Any] = {
        "name": "runtime",
        "image": release.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": CONTAINER_PORT, "protocol": "TCP"}],
        # The image already names the model, its version, SHA-256 and signature.
        "env": [
            {"name": "RUNTIME_MAX_BATCH_SIZE", "value": str(rs.max_batch_size)},
            {"name": "RUNTIME_MAX_DELAY_MS", "value": f"{rs.max_delay_ms:g}"},
        ],
        "startupProbe": probe("/v2/health/ready", STARTUP_PERIOD_S, STARTUP_FAILURES),
        "readinessProbe": probe("/v2/health/ready", 5, 3),
        "livenessProbe": probe("/v2/health/live", 10, 3),
        # `sleep` is in every base the runtime image is built on (Debian, Ubuntu, the CUDA images).
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRE_STOP_SLEEP_S)]}}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    resources = _resources(release)
    if resources:
        container["resources"] = resources
    return container


def _resources(release: ReleaseSpec) -> dict:
    rs = release.settings
    requests = {k: v for k, v in (("cpu", rs.cpu_request), ("memory", rs.memory_request)) if v}
    limits = {k: v for k, v in (("cpu", rs.cpu_limit), ("memory", rs.memory_limit)) if v}
    if rs.gpus > 0:
        limits["nvidia.com/gpu"] = str(rs.gpus)  # extended resources: the request defaults to the limit
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def service_manifest(
    name: str, deployment: DeploymentRef, s: Settings, pod_selector: dict[str, str], release: int | None = None
) -> dict:
    """The stable Service `<key>` (release None), or a release's own Service `<key>-r<N>` for an HTTPRoute."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, s.namespace, labels(deployment, release)),
        "spec": {
            "type": "ClusterIP",
            "selector": pod_selector,
            "ports": [{"name": "http", "port": s.service_port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def stable_selector(deployment: DeploymentRef, weights: dict[int, int]) -> dict[str, str]:
    """One release with traffic: pin it. Several: every release's pods, split by replica ratio."""
    receiving = [n for n, w in weights.items() if w > 0]
    if len(receiving) == 1:
        return {DEPLOYMENT: deployment.key, RELEASE: str(receiving[0])}
    return {DEPLOYMENT: deployment.key}


def model_path(deployment: DeploymentRef) -> str:
    """The paths of one model on a host that several share: the runtime serves it under its own name.

    An environment has one `ingress_host`; every model deployed there gets an Ingress (or HTTPRoute)
    on it, so each claims only `/v2/models/<model>` (and what is below it), not the whole host.
    """
    return f"/v2/models/{deployment.model_name}"


def ingress_manifest(deployment: DeploymentRef, s: Settings) -> dict:
    spec: dict[str, Any] = {
        "rules": [
            {
                "host": s.ingress_host,
                "http": {
                    "paths": [
                        {
                            "path": model_path(deployment),
                            "pathType": "Prefix",
                            "backend": {"service": {"name": deployment.key, "port": {"number": s.service_port}}},
                        }
                    ]
                },
            }
        ]
    }
    if s.ingress_class:
        spec["ingressClassName"] = s.ingress_class
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _meta(deployment.key, s.namespace, labels(deployment)),
        "spec": spec,
    }


def httproute_manifest(deployment: DeploymentRef, s: Settings, weights: dict[int, int]) -> dict:
    """Exact weights: one backendRef per release with traffic, to that release's own Service."""
    assert s.gateway is not None
    parent = {"group": GATEWAY_GROUP, "kind": "Gateway", "name": s.gateway["name"]}
    if s.gateway.get("namespace"):
        parent["namespace"] = s.gateway["namespace"]
    backends = [
        {"group": "", "kind": "Service", "name": release_name(deployment, n), "port": s.service_port, "weight": w}
        for n, w in sorted(weights.items())
        if w > 0
    ]
    return {
        "apiVersion": f"{GATEWAY_GROUP}/{GATEWAY_VERSION}",
        "kind": "HTTPRoute",
        "metadata": _meta(deployment.key, s.namespace, labels(deployment)),
        "spec": {
            "parentRefs": [parent],
            "hostnames": [s.ingress_host],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": model_path(deployment)}}],
                    "backendRefs": backends,
                }
            ],
        },
    }


def stable_release(weights: dict[int, int]) -> int:
    """The release with the largest weight; on a tie the older one stays stable."""
    return max(weights, key=lambda n: (weights[n], -n))


# --- Reading back ------------------------------------------------------------------------------
def rollout_status(dep: dict) -> tuple[bool, str | None, str]:
    """(done, failed, message), judged exactly as `kubectl rollout status deployment` judges."""
    name = dep["metadata"]["name"]
    spec, status = dep.get("spec") or {}, dep.get("status") or {}
    generation = dep["metadata"].get("generation") or 0
    if generation > (status.get("observedGeneration") or 0):
        return False, None, "Waiting for deployment spec update to be observed..."
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            message = f'deployment "{name}" exceeded its progress deadline'
            return False, message, message
    replicas = status.get("replicas") or 0
    updated = status.get("updatedReplicas") or 0
    available = status.get("availableReplicas") or 0
    waiting = f'Waiting for deployment "{name}" rollout to finish: '
    if spec.get("replicas") is not None and updated < spec["replicas"]:
        return False, None, f"{waiting}{updated} out of {spec['replicas']} new replicas have been updated..."
    if replicas > updated:
        return False, None, f"{waiting}{replicas - updated} old replicas are pending termination..."
    if available < updated:
        return False, None, f"{waiting}{available} of {updated} updated replicas are available..."
    return True, None, f'deployment "{name}" successfully rolled out'


def release_status(number: int, dep: dict, pods: list[dict]) -> ReleaseStatus:
    done, failed, message = rollout_status(dep)
    spec, status = dep.get("spec") or {}, dep.get("status") or {}
    replicas = [_replica(pod) for pod in pods if not pod["metadata"].get("deletionTimestamp")]
    return ReleaseStatus(
        number=number,
        desired=spec.get("replicas") or 0,
        updated=status.get("updatedReplicas") or 0,
        ready=sum(1 for r in replicas if r.ready),
        available=status.get("availableReplicas") or 0,
        done=done,
        failed=failed,
        message=message,
        warnings=[r.warning for r in replicas if r.warning],
        replicas=replicas,
    )


def _replica(pod: dict) -> ReplicaStatus:
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    containers = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    warnings = []
    for container in containers:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in WAITING_WARNINGS:
            warnings.append(_warning(name, waiting["reason"], waiting.get("message")))
    for condition in status.get("conditions") or []:
        unschedulable = condition.get("status") == "False" and condition.get("reason") == "Unschedulable"
        if condition.get("type") == "PodScheduled" and unschedulable:
            warnings.append(_warning(name, "Unschedulable", condition.get("message")))
    return ReplicaStatus(
        name=name,
        ready=is_ready(pod),
        restarts=sum(c.get("restartCount") or 0 for c in containers),
        warning="; ".join(warnings) or None,
    )


def _warning(pod: str, reason: str, message: str | None) -> str:
    return f"pod {pod}: {reason}: {message}" if message else f"pod {pod}: {reason}"


def is_ready(pod: dict) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def percentages(shares: dict[int, int]) -> dict[int, int]:
    """Shares as whole percents summing to 100 (largest remainder); all zero when there is nothing."""
    total = sum(shares.values())
    if total <= 0:
        return {n: 0 for n in shares}
    exact = {n: 100 * v / total for n, v in shares.items()}
    result = {n: int(x) for n, x in exact.items()}
    for n in sorted(exact, key=lambda n: (result[n] - exact[n], n))[: 100 - sum(result.values())]:
        result[n] += 1
    return result


def service_weights(service: dict, releases: dict[int, ReleaseStatus]) -> dict[int, int]:
    """Traffic as the Service's selector sends it: one pinned release, or by ready (else desired) replicas."""
    pod_selector = (service.get("spec") or {}).get("selector") or {}
    if RELEASE in pod_selector:
        return {int(pod_selector[RELEASE]): 100}
    shares = {n: r.ready for n, r in releases.items()}
    if not any(shares.values()):
        shares = {n: r.desired for n, r in releases.items()}
    return percentages(shares)


def httproute_weights(deployment: DeploymentRef, route: dict) -> dict[int, int]:
    prefix = f"{deployment.key}-r"
    shares: dict[int, int] = {}
    for rule in (route.get("spec") or {}).get("rules") or []:
        for ref in rule.get("backendRefs") or []:
            name = ref.get("name", "")
            if name.startswith(prefix) and name[len(prefix) :].isdigit():
                number = int(name[len(prefix) :])
                shares[number] = shares.get(number, 0) + ref.get("weight", 1)
    return percentages(shares)
