"""Every manifest the kubernetes target sends, checked against real schemas before the stand-in takes it.

Built-in kinds: kubernetes-validate in strict mode (an unknown field is an error), for
the oldest Kubernetes we claim to support and for the newest the package ships.

HTTPRoute (gateway.networking.k8s.io/v1) is a CRD, which kubernetes-validate does not
know, and no Python package ships the Gateway API's CRD schema. So HTTPROUTE_V1 below is
written by hand from the Gateway API v1 reference (HTTPRoute, ParentReference,
HTTPRouteRule, HTTPRouteMatch, HTTPBackendRef): the fields we use with their documented
types, defaults aside, patterns, lengths and bounds, list limits, and the CRD's CEL rule
that a Service backend must name a port. It is strict like the rest: additionalProperties
is false on every object, so a misspelled field fails. The metadata is checked against
Kubernetes' own ObjectMeta definition from kubernetes-validate. It covers the subset we
send, not the whole API (filters, timeouts, header and query matches are left out, so
sending one of those fails here rather than passing unchecked).
"""

from __future__ import annotations

import jsonschema
import kubernetes_validate
from kubernetes_validate.utils import latest_version, schema_contents
from referencing import Registry, Resource

KUBERNETES_VERSIONS = ("1.33", latest_version())

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_GROUP = {
    "type": "string",
    "maxLength": 253,
    "pattern": r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
}
_KIND = {"type": "string", "minLength": 1, "maxLength": 63, "pattern": r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"}
_OBJECT_NAME = {"type": "string", "minLength": 1, "maxLength": 253}
_NAMESPACE = {"type": "string", "minLength": 1, "maxLength": 63, "pattern": _DNS_LABEL}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}


def _strict(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_PARENT_REF = _strict(
    {
        "group": _GROUP,
        "kind": _KIND,
        "name": _OBJECT_NAME,
        "namespace": _NAMESPACE,
        "sectionName": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": _DNS_SUBDOMAIN},
        "port": _PORT,
    },
    ("name",),
)
_BACKEND_REF = {
    **_strict(
        {
            "group": _GROUP,
            "kind": _KIND,
            "name": _OBJECT_NAME,
            "namespace": _NAMESPACE,
            "port": _PORT,
            "weight": {"type": "integer", "minimum": 0, "maximum": 1000000},
        },
        ("name",),
    ),
    # The CRD's CEL rule: "Must have port for Service reference" (kind Service in the core group, the defaults).
    "if": {
        "properties": {"group": {"const": ""}, "kind": {"const": "Service"}},
    },
    "then": {"required": ["port"]},
}
_PATH_MATCH = _strict(
    {
        "type": {"enum": ["Exact", "PathPrefix", "RegularExpression"]},
        "value": {"type": "string", "maxLength": 1024, "pattern": "^/"},
    }
)
HTTPROUTE_V1 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    **_strict(
        {
            "apiVersion": {"const": "gateway.networking.k8s.io/v1"},
            "kind": {"const": "HTTPRoute"},
            "metadata": {
                "$ref": "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
            },
            "spec": _strict(
                {
                    "parentRefs": {"type": "array", "maxItems": 32, "items": _PARENT_REF},
                    "hostnames": {
                        "type": "array",
                        "maxItems": 16,
                        "items": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 253,
                            "pattern": r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
                        },
                    },
                    "rules": {
                        "type": "array",
                        "maxItems": 16,
                        "items": _strict(
                            {
                                "matches": {"type": "array", "maxItems": 64, "items": _strict({"path": _PATH_MATCH})},
                                "backendRefs": {"type": "array", "maxItems": 16, "items": _BACKEND_REF},
                            }
                        ),
                    },
                }
            ),
            "status": {"type": "object"},
        },
        ("apiVersion", "kind", "metadata", "spec"),
    ),
}

_definitions = Resource.from_contents(
    schema_contents(f"kubernetes-json-schema/v{latest_version()}-local-strict/_definitions.json", latest_version())
)
_httproute_validator = jsonschema.Draft202012Validator(HTTPROUTE_V1, registry=_definitions @ Registry())


def validate_manifest(manifest: dict) -> None:
    """Raise with the reason when `manifest` is not one the API server would accept."""
    if manifest.get("apiVersion", "").startswith("gateway.networking.k8s.io/"):
        _httproute_validator.validate(manifest)
        return
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.absolute_path)
            raise ValueError(f"Kubernetes {exc.version} strict schema: {path}: {exc.message}") from None
