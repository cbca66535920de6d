"""docker/kubernetes/slipway.yaml, the manifests that run Slipway itself: what an API server would accept,
and consistent with the images and settings they name. (tests/controlplane/test_image.py runs their
commands in the real images.)"""

from __future__ import annotations

import re

import pytest
import yaml

from tests.conftest import ROOT
from tests.deployments.kube_schemas import validate_manifest

MANIFESTS = ROOT / "docker" / "kubernetes" / "slipway.yaml"
DOCS = [doc for doc in yaml.safe_load_all(MANIFESTS.read_text()) if doc]
WORKLOADS = {doc["metadata"]["name"]: doc for doc in DOCS if doc["kind"] in ("Deployment", "Job")}
# Read by other programs than Slipway's settings: the Docker SDK and gunicorn.
OTHER_PROGRAMS = {"DOCKER_HOST", "GUNICORN_CMD_ARGS"}


def _pod(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: f"{doc['kind']}/{doc['metadata']['name']}")
def test_each_object_is_valid_for_the_kubernetes_versions_we_support(doc):
    validate_manifest(doc)


def test_every_setting_named_is_one_slipway_reads():
    settings_source = (ROOT / "controlplane" / "settings.py").read_text()
    read = set(re.findall(r'(?:env_[a-z_]+|cache_from_url|database_from_url)\(\s*"([A-Z0-9_]+)"', settings_source))
    assert {"DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SECRET_KEY"} <= read
    (config,) = [doc for doc in DOCS if doc["kind"] == "ConfigMap"]
    named = set(config["data"]) | {
        env["name"] for workload in WORKLOADS.values() for c in _pod(workload)["containers"] for env in c.get("env", [])
    }
    assert named - read - OTHER_PROGRAMS == set()


def test_each_workload_runs_the_image_made_for_it_as_the_images_user():
    images = {name: _pod(w)["containers"][0]["image"] for name, w in WORKLOADS.items()}
    assert images["slipway-worker"].split(":")[0].endswith("/controlplane-worker")  # validation needs torch
    for name in ("slipway-web", "slipway-migrate", "slipway-beat"):
        assert images[name].split(":")[0].endswith("/controlplane-web"), name
    for name, workload in WORKLOADS.items():
        security = _pod(workload)["securityContext"]
        assert (security["runAsNonRoot"], security["runAsUser"]) == (True, 10001), name


def test_exactly_one_scheduler_even_during_an_upgrade():
    beat = WORKLOADS["slipway-beat"]["spec"]
    assert (beat["replicas"], beat["strategy"]["type"]) == (1, "Recreate")


def test_the_workers_account_may_do_what_the_kubernetes_target_does():
    (role,) = [doc for doc in DOCS if doc["kind"] == "Role"]
    (binding,) = [doc for doc in DOCS if doc["kind"] == "RoleBinding"]
    granted = {(group, resource): set(rule["verbs"]) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"]}  # fmt: skip
    write = {"get", "list", "create", "update", "patch", "delete"}
    assert granted == {
        ("apps", "deployments"): write,
        ("", "services"): write,
        ("networking.k8s.io", "ingresses"): write,
        ("gateway.networking.k8s.io", "httproutes"): write,
        ("", "pods"): {"get", "list"},
        ("", "pods/proxy"): {"get"},
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "slipway-worker"}]
    assert _pod(WORKLOADS["slipway-worker"])["serviceAccountName"] == "slipway-worker"
    # Nothing else holds the API credentials the worker's account gets.
    for name in ("slipway-web", "slipway-migrate", "slipway-beat"):
        assert _pod(WORKLOADS[name])["serviceAccountName"] == "slipway-web", name


def test_web_probes_use_the_health_endpoint_on_the_port_it_serves():
    (web,) = _pod(WORKLOADS["slipway-web"])["containers"]
    port = {p["name"]: p["containerPort"] for p in web["ports"]}
    assert port == {"http": 8000}
    assert "--bind 0.0.0.0:8000" in {e["name"]: e["value"] for e in web["env"]}["GUNICORN_CMD_ARGS"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert web[probe]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_a_stopping_web_pod_leaves_the_service_before_gunicorn_stops_accepting_and_finishes_its_uploads():
    pod = _pod(WORKLOADS["slipway-web"])
    (web,) = pod["containers"]
    sleep = web["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and int(sleep[1]) >= 3
    flags = {e["name"]: e["value"] for e in web["env"]}["GUNICORN_CMD_ARGS"].split()
    graceful = int(flags[flags.index("--graceful-timeout") + 1])
    assert pod["terminationGracePeriodSeconds"] > int(sleep[1]) + graceful
