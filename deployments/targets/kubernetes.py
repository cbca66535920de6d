"""The `kubernetes` target: a Deployment per release, a Service per deployment, through the official client.

Objects (names from DeploymentRef.key): Deployment `<key>-r<N>` per release, Service
`<key>` for the stable endpoint, Ingress `<key>` when `ingress_host` is set. With a
`gateway`, traffic splits by exact weight through an HTTPRoute `<key>` whose backends
are per-release Services `<key>-r<N>`; without one, the Service selects every release
with traffic and the split follows the replica ratio the engine sized.

Every call is idempotent (read, then create or replace; 409 Conflict is re-read and
retried). Manifests and the rollout judgement live in kube_objects.py. Standalone:
no Django import. The kubeconfig's contents and tokens never reach a log line or a
message: errors name the file and context, never what is in them.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from deployments.targets import kube_objects as ko
from deployments.targets.base import DeploymentRef, ReleaseSpec, ReleaseStatus, TargetError, TargetStatus

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = (5, 30)  # connect, read (seconds): a hung API server must not hang the worker
CONFLICT_RETRIES = 5
RBAC_NEEDS = (
    "get, list, create, update, patch and delete on deployments (apps), services, "
    "ingresses (networking.k8s.io) and httproutes (gateway.networking.k8s.io); "
    "get and list on pods; get on pods/proxy"
)

# --- Settings -------------------------------------------------------------------------------------
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?")  # a DeploymentRef.key: <= 40 chars
KNOWN_SETTINGS = (
    "namespace",
    "kubeconfig",
    "context",
    "in_cluster",
    "image_pull_secret",
    "ingress_host",
    "ingress_class",
    "gateway",
    "progress_deadline_s",
    "service_port",
)
LABEL_RULE = "1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
SUBDOMAIN_RULE = "lowercase letters, digits, '-' and '.', at most 253 characters"


def validate_config(config: dict) -> dict:
    """The environment's kubernetes settings with defaults filled in; ValueError names every bad field."""
    if not isinstance(config, dict):
        raise ValueError('kubernetes target settings must be an object such as {"namespace": "ml-prod", ...}')
    known = ", ".join(KNOWN_SETTINGS)
    problems = [f"{key}: unknown setting (known: {known})" for key in config if key not in KNOWN_SETTINGS]

    def text(key: str, pattern: re.Pattern | None, rule: str) -> str | None:
        value = config.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value or (pattern is not None and not pattern.fullmatch(value)):
            problems.append(f"{key}: {value!r} is not valid: use {rule}")
            return None
        return value

    def integer(key: str, default: int, low: int, high: int, meaning: str) -> int:
        value = config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(f"{key}: {value!r} is not valid: use a whole number from {low} to {high} ({meaning})")
            return default
        return value

    namespace = text("namespace", _DNS_LABEL, LABEL_RULE)
    if config.get("namespace") is None:
        problems.append('namespace: required: the Kubernetes namespace the releases run in, e.g. "ml-prod"')
    kubeconfig = text("kubeconfig", None, "the path of a kubeconfig file on the worker")
    context = text("context", None, "the name of a context in the kubeconfig")
    in_cluster = config.get("in_cluster", False)
    if not isinstance(in_cluster, bool):
        problems.append(f"in_cluster: {in_cluster!r} is not valid: use true or false")
        in_cluster = False
    if (config.get("kubeconfig") is not None) == in_cluster:
        problems.append(
            "kubeconfig / in_cluster: set exactly one: kubeconfig (the path of a kubeconfig file on the worker) "
            "or in_cluster: true (the worker runs in the cluster with a service account)"
        )
    if context and in_cluster:
        problems.append("context: only applies with kubeconfig; remove it when in_cluster is true")
    image_pull_secret = text("image_pull_secret", _DNS_SUBDOMAIN, f"the name of a Secret ({SUBDOMAIN_RULE})")
    ingress_host = text("ingress_host", _DNS_SUBDOMAIN, f"a host name such as models.example.com ({SUBDOMAIN_RULE})")
    if ingress_host and re.fullmatch(r"[0-9.]+", ingress_host):
        problems.append(f"ingress_host: {ingress_host!r} is an IP address: use a host name, as Ingress requires")
    ingress_class = text("ingress_class", _DNS_SUBDOMAIN, f"the name of an IngressClass ({SUBDOMAIN_RULE})")
    if ingress_class and config.get("ingress_host") is None:
        problems.append("ingress_class: only applies with ingress_host; set ingress_host too")
    gateway = _gateway(config.get("gateway"), problems)
    if gateway is not None:
        if config.get("ingress_host") is None:
            problems.append(
                "gateway: needs ingress_host too: the HTTPRoute matches that host name, so that routes of "
                "different deployments on a shared Gateway do not collide"
            )
        if ingress_class:
            problems.append("ingress_class: does not apply with gateway (the Gateway has its own class); remove it")
    progress_deadline_s = integer("progress_deadline_s", 600, 1, 2**31 - 1, "seconds before a stalled rollout fails")
    service_port = integer("service_port", 80, 1, 65535, "the stable Service's port")
    if problems:
        raise ValueError("invalid kubernetes target settings: " + "; ".join(problems))
    return {
        "namespace": namespace,
        "kubeconfig": kubeconfig,
        "context": context,
        "in_cluster": in_cluster,
        "image_pull_secret": image_pull_secret,
        "ingress_host": ingress_host,
        "ingress_class": ingress_class,
        "gateway": gateway,
        "progress_deadline_s": progress_deadline_s,
        "service_port": service_port,
    }


def _gateway(value: Any, problems: list[str]) -> dict | None:
    if value is None:
        return None
    usage = 'use {"name": "<Gateway name>", "namespace": "<its namespace, if not the releases\' one>"}'
    if not isinstance(value, dict) or set(value) - {"name", "namespace"}:
        problems.append(f"gateway: {value!r} is not valid: {usage}")
        return None
    name, namespace = value.get("name"), value.get("namespace")
    if not isinstance(name, str) or not _DNS_SUBDOMAIN.fullmatch(name):
        problems.append(f"gateway.name: {name!r} is not valid: {usage}")
        return None
    if namespace is not None and (not isinstance(namespace, str) or not _DNS_LABEL.fullmatch(namespace)):
        problems.append(f"gateway.namespace: {namespace!r} is not valid: use {LABEL_RULE}")
        return None
    return {"name": name, **({"namespace": namespace} if namespace else {})}


def _settings(deployment: DeploymentRef) -> ko.Settings:
    if not _DNS_1035.fullmatch(deployment.key):
        raise TargetError(
            f"deployment key {deployment.key!r} cannot name Kubernetes objects: it must be a DNS-1035 label "
            "of at most 40 characters (lowercase letters, digits and '-', starting with a letter)"
        )
    try:
        return ko.Settings(**validate_config(deployment.target_config))
    except ValueError as exc:
        raise TargetError(f"Environment {deployment.environment!r}: {exc}. Fix its target settings.") from None


# --- API clients, cached by (kubeconfig path, mtime, context) -----------------------------------------
_clients: dict[tuple, client.ApiClient] = {}
_clients_lock = threading.Lock()


def _api_client(s: ko.Settings) -> client.ApiClient:
    """A client for these settings; a kubeconfig edited on disk is read again (its mtime is in the key)."""
    if s.in_cluster:
        key: tuple = ("in-cluster",)
    else:
        path = os.path.abspath(os.path.expanduser(s.kubeconfig or ""))
        try:
            key = (path, os.stat(path).st_mtime_ns, s.context)
        except OSError as exc:
            raise TargetError(
                f"The kubeconfig file {path} cannot be read ({exc.strerror}): put it on the worker, "
                "or fix `kubeconfig` in the environment's target settings."
            ) from None
    with _clients_lock:
        api = _clients.get(key)
        if api is None:
            api = _load_client(s, key)
            for stale in [k for k in _clients if k[0] == key[0] and k[-1] == key[-1]]:
                del _clients[stale]
            _clients[key] = api
        return api


def _load_client(s: ko.Settings, key: tuple) -> client.ApiClient:
    if s.in_cluster:
        configuration = client.Configuration()
        try:
            kube_config.load_incluster_config(client_configuration=configuration)
        except ConfigException:
            raise TargetError(
                "in_cluster is set, but this worker has no in-cluster service account (no KUBERNETES_SERVICE_HOST "
                "or no mounted token): run the worker in the cluster, or set kubeconfig instead of in_cluster."
            ) from None
        return client.ApiClient(configuration)
    path = key[0]
    try:
        # persist_config=False: never write refreshed credentials back into the user's file.
        return kube_config.new_client_from_config(config_file=path, context=s.context, persist_config=False)
    except Exception as exc:  # whatever the loader raises may quote the file: never pass it on
        where = f"context {s.context!r} of the kubeconfig file {path}" if s.context else f"the kubeconfig file {path}"
        raise TargetError(
            f"Cannot use {where} ({type(exc).__name__}): check that the file is a kubeconfig with that context, "
            f"its cluster and its credentials (try: kubectl --kubeconfig {path} get pods)."
        ) from None


# --- One call's view of the cluster ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Kind:
    """How to read, write, list and delete one kind of object in one namespace."""

    name: str  # e.g. "Deployment"
    read: Callable[..., Any]  # (name) -> object
    create: Callable[..., Any]  # (body)
    replace: Callable[..., Any]  # (name, body)
    delete: Callable[..., Any]  # (name)
    list: Callable[..., Any]  # (label_selector) -> list result


class _Session:
    """The API for one target call: typed clients, error translation, idempotent writes."""

    def __init__(self, deployment: DeploymentRef):
        self.deployment = deployment
        self.s = _settings(deployment)
        self.api = _api_client(self.s)
        ns = self.s.namespace
        apps, core = client.AppsV1Api(self.api), client.CoreV1Api(self.api)
        net, custom = client.NetworkingV1Api(self.api), client.CustomObjectsApi(self.api)
        self.core = core
        route = (ko.GATEWAY_GROUP, ko.GATEWAY_VERSION, ns, ko.HTTPROUTES)
        background = client.V1DeleteOptions(propagation_policy="Background")
        self.deployments = _Kind(
            "Deployment",
            read=lambda name, **kw: apps.read_namespaced_deployment(name, ns, **kw),
            create=lambda body, **kw: apps.create_namespaced_deployment(ns, body, **kw),
            replace=lambda name, body, **kw: apps.replace_namespaced_deployment(name, ns, body, **kw),
            delete=lambda name, **kw: apps.delete_namespaced_deployment(name, ns, body=background, **kw),
            list=lambda sel, **kw: apps.list_namespaced_deployment(ns, label_selector=sel, **kw),
        )
        self.services = _Kind(
            "Service",
            read=lambda name, **kw: core.read_namespaced_service(name, ns, **kw),
            create=lambda body, **kw: core.create_namespaced_service(ns, body, **kw),
            replace=lambda name, body, **kw: core.replace_namespaced_service(name, ns, body, **kw),
            delete=lambda name, **kw: core.delete_namespaced_service(name, ns, **kw),
            list=lambda sel, **kw: core.list_namespaced_service(ns, label_selector=sel, **kw),
        )
        self.ingresses = _Kind(
            "Ingress",
            read=lambda name, **kw: net.read_namespaced_ingress(name, ns, **kw),
            create=lambda body, **kw: net.create_namespaced_ingress(ns, body, **kw),
            replace=lambda name, body, **kw: net.replace_namespaced_ingress(name, ns, body, **kw),
            delete=lambda name, **kw: net.delete_namespaced_ingress(name, ns, **kw),
            list=lambda sel, **kw: net.list_namespaced_ingress(ns, label_selector=sel, **kw),
        )
        self.httproutes = _Kind(
            "HTTPRoute",
            read=lambda name, **kw: custom.get_namespaced_custom_object(*route, name, **kw),
            create=lambda body, **kw: custom.create_namespaced_custom_object(*route, body, **kw),
            replace=lambda name, body, **kw: custom.replace_namespaced_custom_object(*route, name, body, **kw),
            delete=lambda name, **kw: custom.delete_namespaced_custom_object(*route, name, **kw),
            list=lambda sel, **kw: custom.list_namespaced_custom_object(*route, label_selector=sel, **kw),
        )
        self.patch_deployment = lambda name, body, **kw: apps.patch_namespaced_deployment(name, ns, body, **kw)
        self.pods = lambda sel, **kw: core.list_namespaced_pod(ns, label_selector=sel, **kw)

    # -- calls and errors --
    def call(self, doing: str, fn: Callable[..., Any], *args: Any, ok: tuple[int, ...] = (), **kwargs: Any) -> Any:
        """Call the API; an ApiException with a status in `ok` is returned, any other failure raised as TargetError."""
        try:
            return fn(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except ApiException as exc:
            if exc.status in ok:
                return exc
            raise self.error(exc, doing) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TargetError(
                f"Cannot reach the Kubernetes API server while {doing} ({type(exc).__name__}): check that the "
                f"cluster of {self.source()} is up and reachable from the worker.",
                retryable=True,
            ) from None

    def error(self, exc: ApiException, doing: str) -> TargetError:
        status, ns = exc.status, self.s.namespace
        said = self.redact(_server_message(exc))
        if status == 401:
            return TargetError(
                f"Kubernetes refused the credentials of {self.source()} while {doing} (401 Unauthorized): "
                "renew the token or certificate it uses, or check the service account token."
            )
        if status == 403:
            return TargetError(
                f"Kubernetes refused {doing} (403 Forbidden: {said}). Check the service account's RBAC: "
                f"it needs {RBAC_NEEDS}, in namespace {ns!r}."
            )
        if status == 404 and _missing_namespace(exc, ns):
            return TargetError(
                f"Namespace {ns!r} does not exist in the cluster of {self.source()}: create it "
                f"(kubectl create namespace {ns}) or fix `namespace` in the environment's target settings."
            )
        if status == 404 and "HTTPRoute" in doing:
            return TargetError(
                f"Kubernetes does not know HTTPRoutes while {doing} (404: {said}): install the Gateway API "
                "(gateway.networking.k8s.io/v1) in the cluster, or remove `gateway` from the target settings."
            )
        if status == 0:  # the client reports TLS failures this way
            return TargetError(
                f"TLS with the Kubernetes API server failed while {doing}: check the certificate authority "
                f"and server name in {self.source()}."
            )
        retryable = status in (409, 429) or status >= 500
        advice = (
            "retried for a while; if it lasts, check the API server" if retryable else "fix the cause and try again"
        )
        return TargetError(
            f"Kubernetes answered {status} {exc.reason} while {doing}: {said} ({advice}).", retryable=retryable
        )

    def source(self) -> str:
        if self.s.in_cluster:
            return "the in-cluster service account"
        context = f" (context {self.s.context!r})" if self.s.context else ""
        return f"the kubeconfig {self.s.kubeconfig}{context}"

    def redact(self, text: str) -> str:
        """Tokens and passwords the client holds never go into a message, even if a server echoes one."""
        conf = self.api.configuration
        secrets = [v for v in (conf.api_key or {}).values() if v] + [conf.password or ""]
        secrets += [v.split(" ", 1)[1] for v in list(secrets) if " " in v]
        for secret in sorted(filter(None, secrets), key=len, reverse=True):
            text = text.replace(secret, "[redacted]")
        return text

    # -- idempotent operations on one kind --
    def as_dict(self, obj: Any) -> dict:
        return obj if isinstance(obj, dict) else self.api.sanitize_for_serialization(obj)

    def read(self, kind: _Kind, name: str) -> dict | None:
        result = self.call(f"reading {kind.name} {name!r}", kind.read, name, ok=(404,))
        return None if isinstance(result, ApiException) else self.as_dict(result)

    def list(self, kind: _Kind, label_selector: str, *, ok: tuple[int, ...] = ()) -> list[dict]:
        result = self.call(f"listing {kind.name}s", kind.list, label_selector, ok=ok)
        if isinstance(result, ApiException):
            return []
        return self.as_dict(result).get("items") or []

    def list_pods(self, label_selector: str) -> list[dict]:
        return self.as_dict(self.call("listing pods", self.pods, label_selector)).get("items") or []

    def upsert(self, kind: _Kind, manifest: dict, keep: Callable[[dict, dict], None] | None = None) -> None:
        """Create, or replace at the resourceVersion just read; a 409 means someone wrote in between: read again."""
        name = manifest["metadata"]["name"]
        for _ in range(CONFLICT_RETRIES):
            body = copy.deepcopy(manifest)  # each round starts from what we want, not from the last round's merge
            current = self.read(kind, name)
            if current is None:
                result = self.call(f"creating {kind.name} {name!r}", kind.create, body, ok=(409,))
                if not isinstance(result, ApiException):
                    log.info("kubernetes: created %s %s/%s", kind.name, self.s.namespace, name)
                    return
                continue  # created meanwhile by another worker: replace it on the next round
            self.check_ours(kind, current)
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            annotations = {**(current["metadata"].get("annotations") or {}), **body["metadata"].get("annotations", {})}
            if annotations:  # keep what controllers and people annotated (e.g. the Deployment's revision)
                body["metadata"]["annotations"] = annotations
            if keep is not None:
                keep(current, body)
            result = self.call(f"replacing {kind.name} {name!r}", kind.replace, name, body, ok=(409,))
            if not isinstance(result, ApiException):
                log.info("kubernetes: replaced %s %s/%s", kind.name, self.s.namespace, name)
                return
        raise TargetError(
            f"{kind.name} {name!r} kept changing while Slipway updated it (409 Conflict {CONFLICT_RETRIES} times): "
            "something else writes to it: retried for a while; if it lasts, find what else writes to it.",
            retryable=True,
        )

    def check_ours(self, kind: _Kind, obj: dict) -> None:
        obj_labels = obj["metadata"].get("labels") or {}
        if obj_labels.get(ko.MANAGED_BY) != "slipway" or obj_labels.get(ko.DEPLOYMENT) != self.deployment.key:
            name = obj["metadata"]["name"]
            raise TargetError(
                f"A {kind.name} named {name!r} already exists in namespace {self.s.namespace!r} and Slipway does not "
                f"manage it for {self.deployment.key!r} (it lacks the labels {ko.selector(self.deployment)}): "
                "delete or rename it, or deploy to another namespace."
            )

    def delete(self, kind: _Kind, name: str) -> None:
        """Delete by name; already gone is success."""
        result = self.call(f"deleting {kind.name} {name!r}", kind.delete, name, ok=(404,))
        if not isinstance(result, ApiException):
            log.info("kubernetes: deleted %s %s/%s", kind.name, self.s.namespace, name)


def _server_message(exc: ApiException) -> str:
    try:
        message = json.loads(exc.body).get("message") or ""
    except (TypeError, ValueError, AttributeError):
        message = ""
    return (message or str(exc.reason or "no message"))[:500]


def _missing_namespace(exc: ApiException, namespace: str) -> bool:
    """A write into a namespace that does not exist answers 404 with details naming the namespace."""
    try:
        details = json.loads(exc.body).get("details") or {}
    except (TypeError, ValueError, AttributeError):
        return False
    return details.get("kind") == "namespaces" and details.get("name") == namespace


def _keep_service(current: dict, body: dict) -> None:
    """The cluster IP is allocated once and immutable: carry it over on replace."""
    spec = current.get("spec") or {}
    for field in ("clusterIP", "clusterIPs"):
        if spec.get(field):
            body["spec"][field] = spec[field]


def _keep_track(current: dict, body: dict) -> None:
    """route() owns the track label; apply() must not drop it."""
    track = (current["metadata"].get("labels") or {}).get(ko.TRACK)
    if track:
        body["metadata"]["labels"][ko.TRACK] = track


# --- The target ----------------------------------------------------------------------------------------
class KubernetesTarget:
    """Releases as Deployments in one namespace of a cluster; see the module docstring for the objects."""

    def exact_weights(self, deployment: DeploymentRef) -> bool:
        return _settings(deployment).gateway is not None

    def apply(self, deployment: DeploymentRef, release: ReleaseSpec, replicas: int) -> None:
        if not release.image:
            raise TargetError(
                f"Release {release.number} has no image: the kubernetes target runs images, build one first."
            )
        if replicas < 0:
            raise TargetError(f"replicas must be 0 or more, not {replicas}")
        k = _Session(deployment)
        k.upsert(k.deployments, ko.deployment_manifest(deployment, release, replicas, k.s), keep=_keep_track)
        if k.s.gateway is not None:
            name = ko.release_name(deployment, release.number)
            pods = {ko.DEPLOYMENT: deployment.key, ko.RELEASE: str(release.number)}
            k.upsert(k.services, ko.service_manifest(name, deployment, k.s, pods, release.number), keep=_keep_service)

    def route(self, deployment: DeploymentRef, weights: dict[int, int]) -> str:
        if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) != 100:
            raise TargetError(f"weights must be percents of 0 or more that sum to 100, not {weights!r}")
        k = _Session(deployment)
        running = {ko.release_number(d): d for d in k.list(k.deployments, ko.selector(deployment))}
        missing = sorted(n for n, w in weights.items() if w > 0 and n not in running)
        if missing:  # a selector or backend with no pods behind it would drop that share of the traffic
            raise TargetError(
                f"Cannot send traffic to release(s) {missing}: no Deployment runs them in namespace "
                f"{k.s.namespace!r}. Apply them first."
            )
        stable = ko.service_manifest(deployment.key, deployment, k.s, ko.stable_selector(deployment, weights))
        k.upsert(k.services, stable, keep=_keep_service)
        if k.s.gateway is not None:
            k.upsert(k.httproutes, ko.httproute_manifest(deployment, k.s, weights))
        elif k.s.ingress_host:
            k.upsert(k.ingresses, ko.ingress_manifest(deployment, k.s))
        self._prune_fronts(k, ingress=k.s.gateway is None and bool(k.s.ingress_host), httproute=bool(k.s.gateway))
        self._set_tracks(k, weights, running)
        return _endpoint(k.s, deployment)

    def _prune_fronts(self, k: _Session, *, ingress: bool, httproute: bool) -> None:
        """Delete the Ingress / HTTPRoute unless wanted (settings change; teardown wants neither).

        Where the settings never asked for one, the cluster may lack the Gateway API (404) or
        the RBAC to list it (403): then there is nothing of ours to remove.
        """
        sel = ko.selector(k.deployment)
        if not ingress:
            configured = k.s.gateway is None and bool(k.s.ingress_host)
            for obj in k.list(k.ingresses, sel, ok=() if configured else (403,)):
                k.delete(k.ingresses, obj["metadata"]["name"])
        if not httproute:
            for obj in k.list(k.httproutes, sel, ok=(404,) if k.s.gateway else (403, 404)):
                k.delete(k.httproutes, obj["metadata"]["name"])

    def _set_tracks(self, k: _Session, weights: dict[int, int], running: dict[int | None, dict]) -> None:
        """The largest weight is stable; the label is on the Deployment only, so no pod restarts."""
        stable = ko.stable_release(weights)
        for number, dep in running.items():
            name, track = dep["metadata"]["name"], "stable" if number == stable else "canary"
            if (dep["metadata"].get("labels") or {}).get(ko.TRACK) != track:
                patch = {"metadata": {"labels": {ko.TRACK: track}}}
                k.call(f"labelling Deployment {name!r} {track}", k.patch_deployment, name, patch)

    def status(self, deployment: DeploymentRef) -> TargetStatus:
        k = _Session(deployment)
        pods_by_release: dict[int, list[dict]] = {}
        for pod in k.list_pods(ko.selector(deployment)):
            number = ko.release_number(pod)
            if number is not None:
                pods_by_release.setdefault(number, []).append(pod)
        releases: dict[int, ReleaseStatus] = {}
        for dep in k.list(k.deployments, ko.selector(deployment)):
            number = ko.release_number(dep)
            if number is not None:
                releases[number] = ko.release_status(number, dep, pods_by_release.get(number, []))
        if k.s.gateway is not None:
            front = k.read(k.httproutes, deployment.key)
            weights = ko.httproute_weights(deployment, front) if front else {}
        else:
            front = k.read(k.services, deployment.key)
            weights = ko.service_weights(front, releases) if front else {}
        return TargetStatus(endpoint=_endpoint(k.s, deployment) if front else None, weights=weights, releases=releases)

    def metrics(self, deployment: DeploymentRef, release: int) -> list[str]:
        k = _Session(deployment)
        texts = []
        for pod in k.list_pods(f"{ko.selector(deployment)},{ko.RELEASE}={release}"):
            if not ko.is_ready(pod):
                continue
            name = pod["metadata"]["name"]
            result = k.call(
                f"reading /metrics of pod {name!r}",
                k.core.connect_get_namespaced_pod_proxy_with_path,
                f"{name}:{ko.CONTAINER_PORT}",
                k.s.namespace,
                "metrics",
                _preload_content=False,
                ok=(404,),
            )
            if not isinstance(result, ApiException):  # 404: the pod went away since the list
                texts.append(result.data.decode("utf-8", errors="replace"))
                result.release_conn()
        return texts

    def remove(self, deployment: DeploymentRef, release: int) -> None:
        k = _Session(deployment)
        name = ko.release_name(deployment, release)
        k.delete(k.deployments, name)  # Background: the garbage collector removes its ReplicaSets and pods
        k.delete(k.services, name)  # the per-release Service, if a gateway ever needed one

    def teardown(self, deployment: DeploymentRef) -> None:
        k = _Session(deployment)
        for kind in (k.deployments, k.services):
            for obj in k.list(kind, ko.selector(deployment)):
                k.delete(kind, obj["metadata"]["name"])
        self._prune_fronts(k, ingress=False, httproute=False)


def _endpoint(s: ko.Settings, deployment: DeploymentRef) -> str:
    if s.ingress_host:
        return f"http://{s.ingress_host}"
    return f"http://{deployment.key}.{s.namespace}.svc.cluster.local:{s.service_port}"
