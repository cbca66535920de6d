"""A small stand-in for the Kubernetes API server, for the kubernetes target's tests.

No API server can run on our machines, and the official client must not be
monkeypatched, so the tests write a real kubeconfig pointing at this threaded HTTP
server. It keeps objects in memory and answers the way the API server does for what
the target uses: GET, LIST with labelSelector, POST, PUT with optimistic concurrency
(a stale resourceVersion gets 409 Conflict), PATCH (merge and strategic-merge, both
applied as a JSON merge patch, which is what they mean for the maps we patch), DELETE
(a Deployment's pods go with it, as the garbage collector would), the pod proxy,
Status bodies for errors, bearer-token authentication and RBAC-style 403s. Every
manifest a client sends (POST and PUT bodies, the result of a PATCH) goes through
`validate` first; a manifest it rejects gets 422 and is recorded in `rejected`.

The tests play the controllers: they write status and pods through the methods at the
end (set_status, put_pod), the way the Deployment controller and the kubelet would.

Why not kmock (installed): its server is asyncio-only while our client is synchronous,
its list ignores labelSelector, its PUT merges instead of replacing, and it keeps no
resourceVersion or generation, so there is no 409 on a stale write and no
observedGeneration to lag behind. Those are what the target must get right.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:  # as the API server names it in messages: deployments.apps
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES = [
    Resource("apps", "v1", "deployments", "Deployment"),
    Resource("", "v1", "services", "Service"),
    Resource("", "v1", "pods", "Pod"),
    Resource("networking.k8s.io", "v1", "ingresses", "Ingress"),
    Resource("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute"),
]

_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))/namespaces/(?P<ns>[^/]+)"
    r"(?:/(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+)(?:/(?P<rest>.*))?)?)?)?$"
)
_DNS_1123_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?")
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_MERGE_PATCHES = ("application/merge-patch+json", "application/strategic-merge-patch+json")


class Reply(Exception):
    """An answer other than 200 with the object: a Status body, or plain text."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def body(self) -> dict:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


class KubeStandin:
    def __init__(self, *, token: str, validate: Callable[[dict], None], namespaces: tuple[str, ...] = ("ml",)):
        self.token = token
        self.validate = validate
        self.namespaces = set(namespaces)
        self.resources = {(r.api_version, r.plural): r for r in RESOURCES}
        self.objects: dict[tuple[str, str, str], dict] = {}  # (plural, namespace, name) -> object
        self.requests: list[tuple[str, str]] = []  # (method, path with query)
        self.sent: list[dict] = []  # every manifest accepted from a client (bodies, PATCH results)
        self.rejected: list[str] = []  # why `validate` or the server's own checks refused a manifest
        self.forbidden: set[tuple[str, str]] = set()  # (verb, plural or "pods/proxy") answered 403
        self.metrics_text: dict[str, str] = {}  # pod name -> what its /metrics answers
        self._faults: list[list] = []  # [method, plural, code, times, message]
        self._interfere: dict[tuple[str, str], int] = {}  # (plural, name) -> writes to make after a read
        self._rv = itertools.count(1000)
        self._lock = threading.RLock()
        handler = type("Handler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> KubeStandin:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # --- What tests arrange ------------------------------------------------------------------
    def fail(self, method: str, plural: str, code: int, times: int = 1, message: str = "injected fault") -> None:
        """Answer the next `times` METHOD requests on `plural` with `code` (5xx, 429...)."""
        with self._lock:
            self._faults.append([method, plural, code, times, message])

    def interfere(self, plural: str, name: str, times: int = 1) -> None:
        """After each of the next `times` reads of the object, another writer changes it (a real 409 follows)."""
        with self._lock:
            self._interfere[(plural, name)] = times

    # --- HTTP ------------------------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers, body: bytes) -> tuple[int, str, bytes]:
        with self._lock:
            self.requests.append((method, raw_path))
            try:
                content_type, payload = self._dispatch(method, raw_path, headers, body)
                if isinstance(payload, str):
                    return 200, content_type, payload.encode()
                code = 201 if method == "POST" else 200
                return code, content_type, json.dumps(payload).encode()
            except Reply as reply:
                return reply.code, "application/json", json.dumps(reply.body()).encode()

    def _dispatch(self, method: str, raw_path: str, headers, body: bytes) -> tuple[str, dict | str]:
        if headers.get("Authorization") != f"Bearer {self.token}":
            raise Reply(401, "Unauthorized", "Unauthorized")
        url = urlsplit(raw_path)
        match = _PATH.match(url.path)
        if not match:
            raise Reply(404, "NotFound", "the server could not find the requested resource")
        ns = unquote(match["ns"])
        if not match["plural"]:
            if ns not in self.namespaces:
                raise Reply(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})
            return "application/json", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        api_version = match["core"] or f"{match['group']}/{match['version']}"
        resource = self.resources.get((api_version, match["plural"]))
        if resource is None:
            raise Reply(404, "NotFound", "the server could not find the requested resource")
        name = unquote(match["name"]) if match["name"] else None
        verb = _VERBS.get(method) or ("get" if name else "list")
        rbac_resource = f"{resource.plural}/{match['sub']}" if match["sub"] else resource.plural
        if (verb, rbac_resource) in self.forbidden:
            group = f'"{resource.group}"' if resource.group else '""'
            raise Reply(
                403,
                "Forbidden",
                f'{resource.qualified} is forbidden: User "system:serviceaccount:slipway:worker" cannot {verb} '
                f'resource "{rbac_resource}" in API group {group} in the namespace "{ns}"',
                {"kind": resource.plural},
            )
        self._injected_fault(method, resource)
        if match["sub"] == "proxy" and resource.plural == "pods" and method == "GET":
            return "text/plain; version=0.0.4", self._proxy(ns, name or "", match["rest"] or "")
        if match["sub"]:
            raise Reply(404, "NotFound", "the server could not find the requested resource")
        data = json.loads(body) if body else None
        if method == "GET" and name:
            return "application/json", self._read(resource, ns, name)
        if method == "GET":
            selector = parse_qs(url.query).get("labelSelector", [""])[0]
            items = self.list(resource.plural, ns, selector)
            return "application/json", {
                "apiVersion": resource.api_version,
                "kind": f"{resource.kind}List",
                "metadata": {"resourceVersion": str(next(self._rv))},
                "items": items,
            }
        if method == "POST" and not name:
            return "application/json", self._create(resource, ns, data)
        if method == "PUT" and name:
            return "application/json", self._write(resource, ns, name, data)
        if method == "PATCH" and name:
            content_type = headers.get("Content-Type", "").split(";")[0]
            if content_type not in _MERGE_PATCHES:
                raise Reply(415, "UnsupportedMediaType", f"the stand-in does not implement {content_type} patches")
            current = self._read(resource, ns, name)
            return "application/json", self._write(resource, ns, name, merge_patch(current, data), patch=data)
        if method == "DELETE" and name:
            return "application/json", self._delete(resource, ns, name)
        raise Reply(405, "MethodNotAllowed", f"{method} is not supported here")

    def _injected_fault(self, method: str, resource: Resource) -> None:
        for fault in self._faults:
            if fault[0] == method and fault[1] == resource.plural and fault[3] > 0:
                fault[3] -= 1
                raise Reply(fault[2], "InternalError" if fault[2] >= 500 else "TooManyRequests", fault[4])

    def _read(self, resource: Resource, ns: str, name: str) -> dict:
        obj = self.objects.get((resource.plural, ns, name))
        if obj is None:
            raise self._not_found(resource, name)
        result = copy.deepcopy(obj)
        left = self._interfere.get((resource.plural, name), 0)
        if left:
            self._interfere[(resource.plural, name)] = left - 1
            annotations = obj["metadata"].setdefault("annotations", {})
            annotations["example.com/other-writer"] = str(left)
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
        return result

    def _not_found(self, resource: Resource, name: str) -> Reply:
        details = {"name": name, "group": resource.group, "kind": resource.plural}
        return Reply(404, "NotFound", f'{resource.qualified} "{name}" not found', details)

    def _validate(self, resource: Resource, manifest: dict) -> None:
        """A manifest exactly as the client sent it (or as its PATCH made it) against the schemas: else 422."""
        name = (manifest.get("metadata") or {}).get("name", "")
        try:
            self.validate(manifest)
        except Exception as exc:
            self.rejected.append(f"{resource.kind} {name}: {exc}")
            raise Reply(422, "Invalid", f'{resource.kind} "{name}" is invalid: {exc}') from None
        self.sent.append(copy.deepcopy(manifest))

    def _check(self, resource: Resource, obj: dict, old: dict | None) -> None:
        """What the API server refuses beyond the schema (names, labels, immutable fields): 422."""
        problems = server_checks(resource, obj, old)
        if problems:
            name = obj["metadata"]["name"]
            self.rejected.extend(f"{resource.kind} {name}: {p}" for p in problems)
            raise Reply(422, "Invalid", f'{resource.kind} "{name}" is invalid: {"; ".join(problems)}')

    def _create(self, resource: Resource, ns: str, body: dict) -> dict:
        meta = body.get("metadata") or {}
        name = meta.get("name", "")
        if ns not in self.namespaces:
            raise Reply(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})
        if meta.get("namespace", ns) != ns:
            raise Reply(400, "BadRequest", "the namespace of the provided object does not match the request")
        if body.get("apiVersion") != resource.api_version or body.get("kind") != resource.kind:
            raise Reply(400, "BadRequest", f"expected {resource.api_version} {resource.kind}")
        self._validate(resource, body)
        self._check(resource, body, None)
        if (resource.plural, ns, name) in self.objects:
            details = {"name": name, "group": resource.group, "kind": resource.plural}
            raise Reply(409, "AlreadyExists", f'{resource.qualified} "{name}" already exists', details)
        obj = copy.deepcopy(body)
        obj.pop("status", None)  # status is a subresource: a client cannot write it here
        obj["metadata"].update(
            namespace=ns,
            uid=str(uuid.uuid4()),
            resourceVersion=str(next(self._rv)),
            creationTimestamp=_now(),
            generation=1,
        )
        if resource.plural == "services" and not obj["spec"].get("clusterIP"):
            ip = f"10.96.0.{len(self.objects) % 250 + 2}"
            obj["spec"].update(clusterIP=ip, clusterIPs=[ip])
        self.objects[(resource.plural, ns, name)] = obj
        return copy.deepcopy(obj)

    def _write(self, resource: Resource, ns: str, name: str, body: dict, patch: dict | None = None) -> dict:
        """PUT (body is the whole object) or PATCH (body is the merged result, `patch` what was sent)."""
        old = self.objects.get((resource.plural, ns, name))
        if old is None:
            raise self._not_found(resource, name)
        self._validate(resource, body)
        if (body.get("metadata") or {}).get("name") != name:
            raise Reply(400, "BadRequest", "the name of the object does not match the name in the URL")
        sent_rv = ((patch if patch is not None else body).get("metadata") or {}).get("resourceVersion")
        if sent_rv is not None and sent_rv != old["metadata"]["resourceVersion"]:
            raise Reply(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource.qualified} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                {"name": name, "group": resource.group, "kind": resource.plural},
            )
        obj = copy.deepcopy(body)
        obj.pop("status", None)
        if resource.plural == "services":  # an update may leave out the allocated cluster IP; it is kept
            for field in ("clusterIP", "clusterIPs"):
                obj["spec"].setdefault(field, old["spec"].get(field))
        self._check(resource, obj, old)
        for field in ("uid", "creationTimestamp", "generation"):
            obj["metadata"][field] = old["metadata"][field]
        if obj.get("spec") != old.get("spec"):
            obj["metadata"]["generation"] = old["metadata"]["generation"] + 1
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        if "status" in old:
            obj["status"] = copy.deepcopy(old["status"])
        self.objects[(resource.plural, ns, name)] = obj
        return copy.deepcopy(obj)

    def _delete(self, resource: Resource, ns: str, name: str) -> dict:
        obj = self.objects.pop((resource.plural, ns, name), None)
        if obj is None:
            raise self._not_found(resource, name)
        if resource.plural == "deployments":  # the garbage collector removes its ReplicaSets' pods
            match_labels = obj["spec"]["selector"]["matchLabels"]
            for key in [k for k, pod in self.objects.items() if k[0] == "pods" and k[1] == ns]:
                pod_labels = self.objects[key]["metadata"].get("labels") or {}
                if all(pod_labels.get(k) == v for k, v in match_labels.items()):
                    del self.objects[key]
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "group": resource.group, "kind": resource.plural, "uid": obj["metadata"]["uid"]},
        }

    def _proxy(self, ns: str, name: str, path: str) -> str:
        pod_name, _, port = name.partition(":")
        pod = self.objects.get(("pods", ns, pod_name))
        if pod is None:
            raise Reply(404, "NotFound", f'pods "{pod_name}" not found', {"name": pod_name, "kind": "pods"})
        ip = (pod.get("status") or {}).get("podIP")
        ports = [str(p["containerPort"]) for c in pod["spec"]["containers"] for p in c.get("ports") or []]
        if not ip or port not in ports:
            raise Reply(503, "ServiceUnavailable", f"error trying to reach service: dial tcp {ip}:{port}: refused")
        if path != "metrics":
            raise Reply(404, "NotFound", f"the runtime has no /{path}")
        return self.metrics_text.get(pod_name, f'slipway_model_ready{{pod="{pod_name}"}} 1\n')

    # --- What tests read, and what they write as the controllers would --------------------------------
    def list(self, plural: str, ns: str | None = None, label_selector: str = "") -> list[dict]:
        with self._lock:
            terms = parse_selector(label_selector)
            return [
                copy.deepcopy(obj)
                for (p, o_ns, _), obj in sorted(self.objects.items())
                if p == plural and (ns is None or o_ns == ns) and matches(obj["metadata"].get("labels") or {}, terms)
            ]

    def get(self, plural: str, ns: str, name: str) -> dict | None:
        with self._lock:
            obj = self.objects.get((plural, ns, name))
            return copy.deepcopy(obj) if obj is not None else None

    def set_status(self, plural: str, ns: str, name: str, status: dict) -> None:
        """Write status as the object's controller does (through the status subresource)."""
        with self._lock:
            obj = self.objects[(plural, ns, name)]
            obj["status"] = copy.deepcopy(status)
            obj["metadata"]["resourceVersion"] = str(next(self._rv))

    def delete_pod(self, ns: str, name: str) -> None:
        """Remove a pod as the ReplicaSet controller does when it scales down; already gone is fine."""
        with self._lock:
            self.objects.pop(("pods", ns, name), None)
            self.metrics_text.pop(name, None)

    @property
    def lock(self) -> threading.RLock:
        """Held by a test's controller for one pass, so a client's request lands between passes, never inside.

        (A pod a controller makes for a Deployment deleted meanwhile would outlive it here; in a cluster
        the garbage collector removes it through its owner reference.)
        """
        return self._lock

    def put_pod(self, pod: dict) -> None:
        """Create or replace a pod as the ReplicaSet controller and the kubelet would; it is validated too."""
        with self._lock:
            self.validate(pod)
            pod = copy.deepcopy(pod)
            meta = pod["metadata"]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta["resourceVersion"] = str(next(self._rv))
            self.objects[("pods", meta["namespace"], meta["name"])] = pod


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall
    standin: KubeStandin

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        code, content_type, payload = self.standin.handle(self.command, self.path, self.headers, body)
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format, *args) -> None:  # the tests read `requests` instead
        pass


def write_kubeconfig(path: Path, server: str, token: str) -> Path:
    """A kubeconfig for the stand-in, as a cluster's admin would hand one out: one cluster, one token."""
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: standin\n  cluster:\n    server: {server}\n"
        f"users:\n- name: slipway\n  user:\n    token: {token}\n"
        "contexts:\n- name: standin\n  context:\n    cluster: standin\n    user: slipway\n"
        "current-context: standin\n"
    )
    return path


# --- Pieces of the API server's behaviour ----------------------------------------------------------------
def server_checks(resource: Resource, obj: dict, old: dict | None) -> list[str]:
    """The API server's own validation that a JSON schema cannot express, for what the target sends."""
    problems = []
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    name_rule = _DNS_1035_LABEL if resource.plural == "services" else _DNS_1123_SUBDOMAIN
    if not name_rule.fullmatch(name):
        problems.append(f"metadata.name: Invalid value: {name!r}")
    for key, value in (meta.get("labels") or {}).items():
        prefix, _, label = key.rpartition("/")
        if (prefix and not _DNS_1123_SUBDOMAIN.fullmatch(prefix)) or not _LABEL_NAME.fullmatch(label):
            problems.append(f"metadata.labels: Invalid value: {key!r}: not a qualified name")
        if not isinstance(value, str) or not _LABEL_VALUE.fullmatch(value):
            problems.append(f"metadata.labels: Invalid value: {value!r}: not a valid label value")
    spec = obj.get("spec") or {}
    if resource.plural == "deployments":
        match_labels = (spec.get("selector") or {}).get("matchLabels") or {}
        template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not match_labels or any(template_labels.get(k) != v for k, v in match_labels.items()):
            problems.append("spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`")
        if old is not None and old["spec"]["selector"] != spec.get("selector"):
            problems.append("spec.selector: Invalid value: field is immutable")
    if resource.plural == "services" and old is not None and spec.get("clusterIP") != old["spec"].get("clusterIP"):
        problems.append("spec.clusterIP: Invalid value: field is immutable")
    return problems


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch: maps merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def parse_selector(text: str) -> list[tuple[str, str, set[str]]]:
    """Equality and set-based label selectors: a=b, a==b, a!=b, a, !a, a in (x,y), a notin (x,y)."""
    terms = []
    for term in re.findall(r"(?:[^,(]|\([^)]*\))+", text):
        term = term.strip()
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^)]*)\)", term):
            terms.append((m[1], m[2], {v.strip() for v in m[3].split(",")}))
        elif m := re.fullmatch(r"([^!=\s]+)\s*(==|=|!=)\s*(\S*)", term):
            terms.append((m[1], "!=" if m[2] == "!=" else "=", {m[3]}))
        elif term.startswith("!"):
            terms.append((term[1:], "absent", set()))
        elif term:
            terms.append((term, "present", set()))
    return terms


def matches(obj_labels: dict[str, str], terms: list[tuple[str, str, set[str]]]) -> bool:
    for key, op, values in terms:
        value = obj_labels.get(key)
        ok = {
            "=": value in values,
            "in": value in values,
            "!=": value not in values,
            "notin": value not in values,
            "present": key in obj_labels,
            "absent": key not in obj_labels,
        }[op]
        if not ok:
            return False
    return True


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
