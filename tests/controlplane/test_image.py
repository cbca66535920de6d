"""The control plane's own images (docker/controlplane.Dockerfile), built and run for real.

Built from a copy of what a fresh clone holds (so `.dockerignore` and the Dockerfile's
COPY lines are tested as a user's `docker build .` meets them), offline from the wheelhouse
`make test` downloads, on the base image it makes. Then, as docker/kubernetes/slipway.yaml
runs them: the migrations as a step of their own, the web image and the worker image
side by side on a database, a broker and an artifact volume of this test's own. A model
uploaded through the web container turns `ready` only if the worker container validated
it: torch, the sandbox and the shared volume all work in the images.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import requests
import yaml
from django.conf import settings

from tests.conftest import ROOT, free_port, wait_for
from tests.models_zoo import MLP_SIGNATURE

pytestmark = pytest.mark.slow

DOCKERFILE = "docker/controlplane.Dockerfile"
MANIFESTS = ROOT / "docker" / "kubernetes" / "slipway.yaml"
HOST = "slipway.test"  # what SLIPWAY_ALLOWED_HOSTS allows; probes come by address instead


@pytest.fixture(scope="module")
def docker_engine():
    import docker

    if not os.environ.get("SLIPWAY_CONTROLPLANE_WHEELHOUSE") or not os.environ.get("SLIPWAY_BASE_IMAGE_CPU"):
        pytest.fail("Building the control plane's images needs the wheelhouse and base image: run 'make test'.")
    client = docker.from_env(timeout=600)
    client.ping()
    return client


def _fresh_clone_context(dest: Path) -> Path:
    """The files a fresh clone holds (tracked or not yet committed, never ignored), plus the wheelhouse."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    for wheel in Path(os.environ["SLIPWAY_CONTROLPLANE_WHEELHOUSE"]).glob("*.whl"):
        shutil.copy(wheel, dest / "docker" / "wheelhouse")
    return dest


def _build(client, context: Path, target: str) -> str:
    tag = f"slipway-test/controlplane-{target}:latest"
    log = []
    for chunk in client.api.build(
        path=str(context),
        dockerfile=DOCKERFILE,
        target=target,
        tag=tag,
        buildargs={"BASE_IMAGE": os.environ["SLIPWAY_BASE_IMAGE_CPU"], "PIP_NO_INDEX": "1"},
        rm=True,
        forcerm=True,
        decode=True,
    ):
        log.append(chunk.get("stream") or chunk.get("error") or "")
        if "error" in chunk:
            pytest.fail(f"building {target} failed:\n{''.join(log[-40:])}")
    return tag


@pytest.fixture(scope="module")
def images(docker_engine, tmp_path_factory):
    context = _fresh_clone_context(tmp_path_factory.mktemp("controlplane-context"))
    return {target: _build(docker_engine, context, target) for target in ("web", "worker")}


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    """The Kubernetes manifests' workloads, by name: the test runs their containers' commands."""
    docs = [doc for doc in yaml.safe_load_all(MANIFESTS.read_text()) if doc]
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] in ("Deployment", "Job")}


def _container_spec(workload: dict) -> dict:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """A database, a broker and an artifact volume of this test's own."""
    db = settings.DATABASES["default"]
    name = f"slipway_image_{uuid.uuid4().hex[:8]}"
    server = dict(host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"], password=db["PASSWORD"])
    with psycopg.connect(dbname="postgres", autocommit=True, **server) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    redis_port = free_port()
    redis_dir = tmp_path_factory.mktemp("image-redis")
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--dir", str(redis_dir)],
        stdout=subprocess.DEVNULL,
    )
    volume = tmp_path_factory.mktemp("image-var")
    os.chown(volume, 10001, 10001)  # the images' user, as a Kubernetes fsGroup or a volume's owner would make it
    password = f":{server['password']}" if server["password"] else ""
    yield {
        "DATABASE_URL": f"postgres://{server['user']}{password}@{server['host']}:{server['port']}/{name}",
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "volume": str(volume),
    }
    redis.terminate()
    redis.wait(10)
    with psycopg.connect(dbname="postgres", autocommit=True, **server) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run(client, image: str, services: dict, command: list[str] | None = None, env: dict | None = None, **kwargs):
    return client.containers.run(
        image,
        command,
        environment={
            "DATABASE_URL": services["DATABASE_URL"],
            "CELERY_BROKER_URL": services["CELERY_BROKER_URL"],
            "DJANGO_SECRET_KEY": "image-test-" + uuid.uuid4().hex,
            "SLIPWAY_ALLOWED_HOSTS": HOST,
            **(env or {}),
        },
        volumes={services["volume"]: {"bind": "/var/lib/slipway", "mode": "rw"}},
        network_mode="host",  # the test's PostgreSQL and Redis listen on the host's loopback
        **kwargs,
    )


def _one_off(client, image: str, services: dict, command: list[str], env: dict | None = None) -> str:
    container = _run(client, image, services, command, env, detach=True)
    try:
        status = container.wait(timeout=300)
        output = container.logs(stdout=True, stderr=False).decode()
        assert status["StatusCode"] == 0, f"{' '.join(command)} failed:\n{container.logs().decode()}"
    finally:
        container.remove(force=True)
    return output


def test_the_images_serve_and_validate_a_model_together(docker_engine, images, services, manifests, model_files):
    client = docker_engine
    web_image = client.images.get(images["web"])
    worker_image = client.images.get(images["worker"])
    for image in (web_image, worker_image):
        assert image.attrs["Config"]["User"] == "10001:10001"  # never root
    # torch stays out of the web image: the web process never loads a model.
    web_size, worker_size = web_image.attrs["Size"], worker_image.attrs["Size"]
    assert worker_size - web_size > 100 * 2**20, (web_size, worker_size)

    # Migrations first, as the manifests' Job runs them.
    migrate = _container_spec(manifests["slipway-migrate"])
    _one_off(client, images["web"], services, migrate["command"])
    token = _one_off(
        client,
        images["web"],
        services,
        ["sh", "-c", "python manage.py ensure_admin && python manage.py create_api_token ops"],
        {"DJANGO_SUPERUSER_USERNAME": "ops", "DJANGO_SUPERUSER_PASSWORD": uuid.uuid4().hex},
    )
    token = token.strip().splitlines()[-1]

    port = free_port()
    web = _run(
        client,
        images["web"],
        services,
        _container_spec(manifests["slipway-web"]).get("command"),
        {"GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port} --workers 2"},
        detach=True,
    )
    worker = _run(
        client, images["worker"], services, _container_spec(manifests["slipway-worker"])["command"], detach=True
    )
    beat = _run(client, images["web"], services, _container_spec(manifests["slipway-beat"])["command"], detach=True)
    try:
        base = f"http://127.0.0.1:{port}"

        def healthy():
            try:
                return requests.get(f"{base}/healthz", timeout=2).status_code == 200  # by address, as a probe
            except requests.RequestException:  # not listening yet, or still starting its workers
                return False

        wait_for(healthy, timeout=120, what=f"the web container to answer /healthz:\n{web.logs().decode()[-2000:]}")
        site = requests.Session()
        site.headers.update({"Host": HOST, "Authorization": f"Bearer {token}"})
        page = site.get(f"{base}/login/", timeout=10)
        assert page.status_code == 200
        css = re.search(r'<link[^>]+href="(/static/[^"]+\.css)"', page.text).group(1)
        assert site.get(f"{base}{css}", timeout=10).status_code == 200  # collected into the image, served

        assert site.post(f"{base}/api/v1/models/", json={"name": "iris"}, timeout=10).status_code == 201
        with open(model_files["torchscript"], "rb") as fh:
            uploaded = site.post(
                f"{base}/api/v1/models/iris/versions/",
                files={"artifact": ("iris.pt", fh)},
                data={"signature": json.dumps(MLP_SIGNATURE)},
                timeout=60,
            )
        assert uploaded.status_code == 201, uploaded.text

        def validated():
            body = site.get(f"{base}/api/v1/models/iris/versions/1/", timeout=10).json()
            return body if body["status"] in ("ready", "rejected") else None

        version = wait_for(
            validated, timeout=120, interval=0.5, what=f"validation by the worker:\n{worker.logs().decode()[-3000:]}"
        )
        assert version["status"] == "ready", version
        assert version["parameter_count"] == 67

        beat.reload()
        assert beat.status == "running", beat.logs().decode()[-2000:]
        assert "beat: Starting" in beat.logs().decode()

        # A graceful stop: gunicorn and Celery exit 0 on SIGTERM, well within the manifests' grace periods.
        for container in (web, worker, beat):
            started = time.monotonic()
            container.stop(timeout=30)
            assert time.monotonic() - started < 20, container.name
            assert container.wait(timeout=5)["StatusCode"] == 0, container.logs().decode()[-2000:]
    finally:
        for container in (web, worker, beat):
            container.remove(force=True)
