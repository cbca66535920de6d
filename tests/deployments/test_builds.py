"""Image builds on a real Docker engine, pushed to a real registry, run for real."""

import hashlib
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import requests
import torch
from django.conf import settings
from django.utils import timezone
from django.utils.html import escape

from controlplane.audit import Actor
from controlplane.models import AuditEvent
from deployments import builds, services
from deployments.models import BuildStatus, ImageBuild
from deployments.tasks import run_image_build
from tests.conftest import free_port, wait_for
from tests.deployments.docker_proxy import DockerProxy
from tests.deployments.slow_link import SlowLink

pytestmark = [pytest.mark.docker, pytest.mark.worker, pytest.mark.slow]


def _request(api, version, variant="cpu"):
    url = f"/api/v1/models/{version.model.name}/versions/{version.version}/builds/"
    return api.post(url, {"variant": variant}, format="json")


def _settled(build_id, timeout=600) -> ImageBuild:
    def done():
        build = ImageBuild.objects.get(pk=build_id)
        return build if build.is_terminal else None

    return wait_for(done, timeout=timeout, interval=0.5, what=f"build {build_id} to finish")


def test_a_ready_version_is_built_pushed_and_serves_inference(api, ready_version, docker_client, model_files):
    response = _request(api, ready_version)
    assert response.status_code == 201, response.json()
    build = _settled(response.json()["id"])
    assert build.status == BuildStatus.SUCCEEDED, build.error + build.log[-3000:]
    recipe = hashlib.sha256(f"{build.runtime_version}\n{build.base_image}".encode()).hexdigest()[:8]
    assert build.image_ref.endswith(f"/slipway/{ready_version.model.name}:v1-{ready_version.sha256[:12]}-{recipe}-cpu")
    assert build.digest.startswith("sha256:") and build.size_bytes > 0 and not build.cache_hit
    detail = api.get(f"/api/v1/builds/{build.pk}/").json()
    assert detail["digest"] == build.digest and "Successfully built" in detail["log"]

    # Pull the digest back from the registry and run it.
    repository = build.image_ref.rsplit(":", 1)[0]
    docker_client.images.remove(build.image_ref, force=True)
    image = docker_client.images.pull(f"{repository}@{build.digest}")
    assert image.labels["io.slipway.model.sha256"] == ready_version.sha256
    assert image.labels["io.slipway.runtime.version"] == build.runtime_version
    assert image.labels["io.slipway.base-image"] == build.base_image
    assert image.attrs["Config"]["User"] == "10001:10001"
    port = free_port()
    container = docker_client.containers.run(
        image.id, detach=True, network_mode="host", environment={"RUNTIME_PORT": str(port)}
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def ready():
            try:
                return requests.get(f"{base}/v2/health/ready", timeout=1).status_code == 200
            except requests.ConnectionError:
                container.reload()
                assert container.status == "running", container.logs().decode()[-2000:]
                return False

        wait_for(ready, timeout=120, interval=0.5, what="the container to be ready")
        pid_1 = container.exec_run(["cat", "/proc/1/cmdline"]).output.decode()
        torch_dir = "import importlib.util; print(importlib.util.find_spec('torch').submodule_search_locations[0])"
        left = container.exec_run(
            [
                "sh",
                "-c",
                f'cd "$(python -c "{torch_dir}")" && for p in test include bin/*; do [ -e "$p" ] && echo "$p"; done',
            ]
        ).output
        x = torch.arange(8, dtype=torch.float32).reshape(2, 4) / 10
        body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": x.flatten().tolist()}]}
        answer = requests.post(f"{base}/v2/models/{ready_version.model.name}/infer", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        expected = torch.jit.load(str(model_files["torchscript"]))(x)
        got = torch.tensor(answer.json()["outputs"][0]["data"]).reshape(expected.shape)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    finally:
        started = time.monotonic()
        container.stop(timeout=20)
        stopped_after = time.monotonic() - started
        container.reload()
        exit_code = container.attrs["State"]["ExitCode"]
        container.remove(force=True)
    assert exit_code == 0, "the runtime should exit cleanly on SIGTERM"
    assert stopped_after < 15, "the runtime should drain and exit on SIGTERM, not be killed"
    assert pid_1.startswith("dumb-init\0"), pid_1
    assert left.decode().split() == ["bin/torch_shm_manager"], "torch's tests, tools and headers are not served"

    # A SIGTERM at once, in the interpreter's first milliseconds: a Python that is PID 1 would not see it (the
    # kernel delivers PID 1 only the signals it handles) and run on until killed.
    early = docker_client.containers.run(
        image.id, detach=True, network_mode="host", environment={"RUNTIME_PORT": str(free_port())}
    )
    try:
        early.kill(signal="SIGTERM")
        status = early.wait(timeout=20)["StatusCode"]  # a timeout here: the signal was lost
    finally:
        early.remove(force=True)
    assert status in (0, 143), status  # 143: killed by it before its handlers were in; 0: it drained


def test_an_image_already_in_the_registry_is_a_cache_hit(api, ready_version, docker_client):
    first = _settled(_request(api, ready_version).json()["id"])
    assert first.status == BuildStatus.SUCCEEDED, first.error
    # A build whose push landed but whose worker died before recording it.
    ImageBuild.objects.filter(pk=first.pk).update(status=BuildStatus.FAILED)

    started = time.monotonic()
    response = _request(api, ready_version)
    assert response.status_code == 201
    again = _settled(response.json()["id"], timeout=60)
    assert time.monotonic() - started < 5
    assert again.status == BuildStatus.SUCCEEDED and again.cache_hit
    assert again.digest == first.digest


def test_identical_requests_share_one_build(api, ready_version, docker_client):
    answers = []

    def ask():
        answers.append(_request(api, ready_version))

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers) == [200] * 5 + [201]
    assert len({a.json()["id"] for a in answers}) == 1
    assert ImageBuild.objects.count() == 1
    assert _settled(answers[0].json()["id"]).status == BuildStatus.SUCCEEDED


def test_a_build_starts_and_finishes_with_audit_events(api, ready_version, docker_client):
    build = _settled(_request(api, ready_version).json()["id"])
    actions = list(
        AuditEvent.objects.filter(target_type="image_build", target_id=str(build.pk)).values_list("action", "actor")
    )
    assert ("image_build.start", "alice (token: laptop)") in actions
    assert ("image_build.finish", "system") in actions


def test_only_a_ready_version_can_be_built(api, alice, worker, model_files):
    api.post("/api/v1/models/", {"name": "iris"}, format="json")
    with open(model_files["torchscript"], "rb") as fh:
        bad = '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 7]}]}'
        api.post("/api/v1/models/iris/versions/", {"artifact": fh, "signature": bad}, format="multipart")
    wait_for(lambda: api.get("/api/v1/models/iris/versions/1/").json()["status"] == "rejected", timeout=90)
    response = api.post("/api/v1/models/iris/versions/1/builds/", {"variant": "cpu"}, format="json")
    assert response.status_code == 409
    assert "only a ready version can be built" in response.json()["error"]


# --- Failure paths: the task runs in this process against real engines -------------------


def _queued(version, **overrides) -> ImageBuild:
    base_image = overrides.get("base_image", services.base_image_for("cpu"))
    return ImageBuild.objects.create(
        model_version=version,
        variant="cpu",
        base_image=base_image,
        runtime_version=services.runtime_version(),
        image_ref=builds.image_ref(
            overrides.get("registry", settings.SLIPWAY_REGISTRY),
            version.model.name,
            version.version,
            version.sha256,
            "cpu",
            runtime_version=services.runtime_version(),
            base_image=base_image,
        )
        + overrides.get("tag_suffix", ""),
    )


def test_an_unreachable_registry_fails_the_build_with_its_log_kept(ready_version, docker_client, settings):
    settings.SLIPWAY_REGISTRY = "127.0.0.1:1"
    build = _queued(ready_version, registry="127.0.0.1:1")
    assert run_image_build(build.pk) == "failed"
    build.refresh_from_db()
    assert build.status == BuildStatus.FAILED and build.digest == ""
    assert "127.0.0.1:1" in build.error and "SLIPWAY_REGISTRY" in build.error
    assert "FAILED" in build.log
    assert AuditEvent.objects.filter(action="image_build.finish", outcome="failed", target_id=str(build.pk)).exists()


def test_a_dead_docker_host_fails_the_build_with_what_to_do(ready_version, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    build = _queued(ready_version)
    assert run_image_build(build.pk) == "failed"
    build.refresh_from_db()
    assert "Cannot reach the Docker engine at tcp://127.0.0.1:1" in build.error
    assert "DOCKER_HOST" in build.error


def test_a_build_stream_that_ends_without_an_image_never_pushes_an_older_image_of_the_tag(
    ready_version, docker_client, settings, monkeypatch
):
    """The engine ends the build's stream early, with no error and no image named (the proxy stands in
    for its socket), while the Docker host holds an older image under the very tag: that one must not be
    pushed as this build's."""
    build = _queued(ready_version)
    repository, tag = build.image_ref.rsplit(":", 1)
    docker_client.images.get(settings.SLIPWAY_BASE_IMAGE_CPU).tag(repository, tag)  # the older image
    try:
        with DockerProxy() as proxy:
            proxy.cut = ("end", b"Step 2/")
            monkeypatch.setenv("DOCKER_HOST", proxy.url)
            outcome = run_image_build(build.pk)
            monkeypatch.delenv("DOCKER_HOST")
        assert proxy.cuts == 1
    finally:
        docker_client.images.remove(build.image_ref)
    build.refresh_from_db()
    assert outcome == "failed" and build.status == BuildStatus.FAILED and build.digest == ""
    assert "ended the build without naming the image it built" in build.error and "Retry" in build.error
    assert builds.registry_digest(docker_client, build.image_ref, builds.BuildConfig.from_settings()) is None


def test_a_tag_moved_to_another_image_just_before_the_push_does_not_get_that_image_pushed_as_this_build(
    ready_version, docker_client, settings, monkeypatch
):
    """The push goes by tag. Another attempt building the same image on the same Docker engine may
    re-tag it between this attempt's build and its push (the proxy holds the push while the test does
    so): what the registry gets, and the digest recorded, must still be this attempt's image."""
    build = _queued(ready_version)
    repository, tag = build.image_ref.rsplit(":", 1)
    with DockerProxy() as proxy:
        proxy.hold = b"/push"
        monkeypatch.setenv("DOCKER_HOST", proxy.url)
        outcome = []
        runner = threading.Thread(target=lambda: outcome.append(run_image_build(build.pk)))
        runner.start()
        try:
            assert proxy.held.wait(timeout=300), ImageBuild.objects.get(pk=build.pk).log
            built = docker_client.images.get(build.image_ref).id
            docker_client.images.get(settings.SLIPWAY_BASE_IMAGE_CPU).tag(repository, tag)  # the other attempt's
        finally:
            proxy.release.set()
            runner.join(timeout=300)
    build.refresh_from_db()
    assert outcome == ["succeeded"], build.error
    assert builds.registry_digest(docker_client, build.image_ref, builds.BuildConfig.from_settings()) == build.digest
    pushed = docker_client.images.get(f"{repository}@{build.digest}")
    assert pushed.id == built and pushed.labels["io.slipway.model.sha256"] == ready_version.sha256
    assert build.size_bytes == pushed.attrs["Size"] and "re-tagged to another image" in build.log


def test_a_docker_engine_that_stops_answering_mid_build_says_so(ready_version, docker_client, monkeypatch):
    build = _queued(ready_version)
    with DockerProxy() as proxy:
        proxy.cut = ("drop", b"Step 2/")
        monkeypatch.setenv("DOCKER_HOST", proxy.url)
        assert run_image_build(build.pk) == "failed"
    assert proxy.cuts == 1
    build.refresh_from_db()
    assert build.error.startswith(f"The Docker engine at {proxy.url} stopped answering during the build"), build.error
    assert "retry the build" in build.error and "crashed" not in build.error
    assert "FAILED: The Docker engine" in build.log


def test_a_docker_host_out_of_disk_fails_the_build_saying_so_and_what_to_free(
    ready_version, docker_client, monkeypatch
):
    """The engine fails the build before any output, answering with its own words (the classic builder could
    not store the context under its data root); the SDK's error then starts with a long URL (the build's
    arguments), which must not hide them."""
    build = _queued(ready_version)
    with DockerProxy() as proxy:
        proxy.fail = (
            b"/build?",
            "write /var/lib/docker/tmp/docker-builder2710358934/model/model.pt: no space left on device",
        )
        monkeypatch.setenv("DOCKER_HOST", proxy.url)
        assert run_image_build(build.pk) == "failed"
    build.refresh_from_db()
    assert build.error.startswith("The Docker host ran out of disk space"), build.error
    assert "docker image prune" in build.error and "docker builder prune" in build.error


def test_a_failing_build_step_fails_the_build_and_a_retry_is_possible(api, ready_version, docker_client, settings):
    settings.SLIPWAY_WHEELHOUSE = str(Path(settings.VAR_DIR) / "empty-wheelhouse")
    Path(settings.SLIPWAY_WHEELHOUSE).mkdir(exist_ok=True)
    settings.SLIPWAY_PIP_OFFLINE = True  # nothing to install from: pip fails
    build = _queued(ready_version, tag_suffix="-broken")
    assert run_image_build(build.pk) == "failed"
    build.refresh_from_db()
    assert "A build step failed" in build.error
    assert "pip install" in build.log
    # The failed attempt does not block asking again.
    assert _request(api, ready_version).status_code == 201


def test_a_missing_base_image_says_which_setting_to_change(ready_version, docker_client, settings):
    build = _queued(ready_version, base_image="slipway-base/does-not-exist:1")
    assert run_image_build(build.pk) == "failed"
    build.refresh_from_db()
    assert "SLIPWAY_BASE_IMAGE" in build.error


def test_a_corrupted_artifact_is_caught_before_it_is_copied_in(ready_version, tmp_path):
    path = Path(ready_version.artifact.path)
    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        with pytest.raises(builds.BuildFailed, match="storage corrupted it"):
            builds.assemble_context(
                tmp_path,
                artifact_open=lambda: ready_version.artifact.open("rb"),
                artifact_sha256=ready_version.sha256,
                artifact_format=ready_version.format,
                config=builds.BuildConfig(registry="r"),
            )
    finally:
        path.write_bytes(original)


def test_the_build_context_holds_only_what_the_dockerfile_needs(ready_version, tmp_path, settings):
    config = builds.BuildConfig(registry="r", wheelhouse=settings.SLIPWAY_WHEELHOUSE)
    builds.assemble_context(
        tmp_path,
        artifact_open=lambda: ready_version.artifact.open("rb"),
        artifact_sha256=ready_version.sha256,
        artifact_format=ready_version.format,
        config=config,
    )
    top = sorted(p.name for p in tmp_path.iterdir())
    assert top == ["Dockerfile", "certs", "inference_runtime", "model", "wheelhouse"]
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["model.pt"]
    everything = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")]
    assert not [p for p in everything if "var" in Path(p).parts or "secret" in p or p.endswith((".env", ".sqlite3"))]
    assert all(Path(p).suffix == ".whl" for p in (tmp_path / "wheelhouse").iterdir())


def test_a_running_build_can_be_cancelled(api, ready_version, docker_client, settings):
    # An index that refuses connections keeps pip retrying (and logging) for a few seconds.
    settings.SLIPWAY_PIP_OFFLINE = False
    settings.SLIPWAY_PIP_INDEX_URL = "http://127.0.0.1:9/simple"
    settings.SLIPWAY_WHEELHOUSE = ""
    build = _queued(ready_version, tag_suffix="-cancelled")
    outcome = []
    runner = threading.Thread(target=lambda: outcome.append(run_image_build(build.pk)))
    runner.start()
    wait_for(lambda: "Retrying" in ImageBuild.objects.get(pk=build.pk).log, timeout=120, what="pip to be retrying")
    response = api.post(f"/api/v1/builds/{build.pk}/cancel/")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    runner.join(timeout=30)
    assert outcome == ["cancelled"]
    build.refresh_from_db()
    assert build.status == BuildStatus.CANCELLED and build.digest == ""
    assert AuditEvent.objects.filter(action="image_build.cancel", target_id=str(build.pk)).exists()
    assert api.post(f"/api/v1/builds/{build.pk}/cancel/").status_code == 409


def test_a_build_cancelled_while_it_pushes_stops_pushing(api, ready_version, docker_client, settings):
    """A push of the image's layers can take minutes, during which the engine reports only byte counts:
    a cancel must still be noticed within a few seconds, not when the push is over."""
    with SlowLink(settings.SLIPWAY_REGISTRY, bytes_per_s=8_000_000) as link:
        settings.SLIPWAY_REGISTRY = link.address
        build = _queued(ready_version, registry=link.address)
        outcome = []
        runner = threading.Thread(target=lambda: outcome.append(run_image_build(build.pk)))
        runner.start()
        try:
            wait_for(lambda: "Pushing" in ImageBuild.objects.get(pk=build.pk).log, timeout=300, what="the push")
            time.sleep(2)
            assert api.post(f"/api/v1/builds/{build.pk}/cancel/").status_code == 200
            runner.join(timeout=10)
            assert outcome == ["cancelled"], "the worker was still pushing 10 s after the cancel"
        finally:
            runner.join(timeout=600)
    build.refresh_from_db()
    assert build.status == BuildStatus.CANCELLED and build.digest == ""


def test_a_registry_that_stalls_mid_push_is_named_as_the_problem_not_the_docker_engine(
    ready_version, docker_client, settings
):
    """The registry takes the push's connections, then stops answering: the Docker engine waits on it and
    sends no progress until the build's client gives up. The engine itself still answers: the error must
    send the operator to the registry, not to a Docker engine that is fine."""
    settings.SLIPWAY_BUILD_TIMEOUT_S = 20  # also how long the client waits for the engine's next word
    with SlowLink(settings.SLIPWAY_REGISTRY, bytes_per_s=8_000_000) as link:
        settings.SLIPWAY_REGISTRY = registry = link.address
        build = _queued(ready_version, registry=registry, tag_suffix="-stalled")
        outcome = []
        runner = threading.Thread(target=lambda: outcome.append(run_image_build(build.pk)))
        runner.start()
        try:
            wait_for(lambda: "Pushing" in ImageBuild.objects.get(pk=build.pk).log, timeout=60, what="the push")
            link.stalled.set()
            runner.join(timeout=120)
        finally:
            link.stalled.clear()
            runner.join(timeout=600)
    build.refresh_from_db()
    assert outcome == ["failed"], build.error
    assert build.error.startswith(f"The registry {registry} stopped answering during the push"), build.error
    assert "SLIPWAY_REGISTRY" in build.error and "Docker engine at" not in build.error


def test_a_registry_that_stalls_before_the_build_is_named_as_the_problem(ready_version, docker_client, settings):
    """The look for an image the registry already holds is the build's first word with it: silent there too."""
    settings.SLIPWAY_BUILD_TIMEOUT_S = 5
    with SlowLink(settings.SLIPWAY_REGISTRY, bytes_per_s=0) as link:
        link.stalled.set()
        settings.SLIPWAY_REGISTRY = registry = link.address
        build = _queued(ready_version, registry=registry)
        try:
            assert run_image_build(build.pk) == "failed"
        finally:
            link.stalled.clear()
    build.refresh_from_db()
    assert build.error.startswith(f"The registry {registry} stopped answering during a look at the registry")
    assert "Docker engine at" not in build.error


def test_a_build_whose_worker_died_is_taken_up_again_and_its_log_shows_where_the_retry_begins(
    api, client, alice, ready_version, docker_client, settings
):
    build = _queued(ready_version)
    assert services.claim(build.pk)
    services.append_log(
        build.pk, "Building the image (attempt 1)\nStep 1/9 : ARG BASE_IMAGE\n", 1
    )  # then its worker died
    stale = timezone.now() - timedelta(seconds=settings.SLIPWAY_BUILD_STALE_S + 60)
    ImageBuild.objects.filter(pk=build.pk).update(heartbeat_at=stale)
    assert services.recover_stale_builds(actor=Actor.system()) == [build.pk]
    build = _settled(build.pk)
    assert build.status == BuildStatus.SUCCEEDED and build.attempts == 2, build.error
    assert AuditEvent.objects.filter(action="image_build.requeued", target_id=str(build.pk)).exists()

    # The retry's output does not run on from the lost attempt's: a line says where attempt 2 begins, and why.
    first, separator, second = build.log.partition(
        f"\n===== Attempt 2 (of at most {settings.SLIPWAY_BUILD_MAX_ATTEMPTS})"
    )
    assert separator, build.log
    assert first == "Building the image (attempt 1)\nStep 1/9 : ARG BASE_IMAGE\n"
    header, rest = second.split("\n", 1)
    assert f"attempt 1's worker stopped answering (no heartbeat for {settings.SLIPWAY_BUILD_STALE_S:.0f}s)" in header
    assert rest.startswith(f"Building {build.image_ref}") and "Successfully built" in rest
    assert separator + header in api.get(f"/api/v1/builds/{build.pk}/").json()["log"]
    client.force_login(alice)
    assert escape(separator + header) in client.get(f"/builds/{build.pk}/").content.decode()


def test_a_worker_killed_mid_build_leaves_its_context_only_until_the_build_is_recovered(
    api, ready_version, docker_client, worker, settings
):
    """A SIGKILLed worker cleans nothing up: its build context (a full copy of the model, and the CA
    bundle) stays in the var dir, under the build's name, until the stale-build recovery takes the build
    up again and removes it; the retry then removes its own."""
    build_id = _request(api, ready_version).json()["id"]
    wait_for(lambda: "Step 1/" in ImageBuild.objects.get(pk=build_id).log, timeout=120, what="the build to run")
    left = builds.context_dir(build_id, 1)
    assert left.parent == Path(settings.VAR_DIR) / "builds"
    try:
        worker.kill()
    finally:
        worker.start()
    assert (left / "context" / "model" / "model.pt").read_bytes() == Path(ready_version.artifact.path).read_bytes()

    stale = timezone.now() - timedelta(seconds=settings.SLIPWAY_BUILD_STALE_S + 60)
    ImageBuild.objects.filter(pk=build_id).update(heartbeat_at=stale)
    assert services.recover_stale_builds(actor=Actor.system()) == [build_id]
    assert not left.exists()
    build = _settled(build_id)
    assert build.status == BuildStatus.SUCCEEDED and build.attempts == 2, build.error
    assert [key for key in builds.contexts_on_disk().values() if key[0] == build_id] == []


@pytest.mark.parametrize("ending", ["succeeds", "fails"])
def test_an_attempt_the_sweeper_replaced_cannot_end_the_attempt_that_replaced_it(
    ready_version, docker_client, monkeypatch, ending
):
    """Attempt 1's worker was silent long enough for the sweeper to queue the build again, and another
    worker claimed attempt 2; then attempt 1 carries on. Whether it then succeeds or fails, it must not
    end the build that attempt 2 is still building, nor write into its log. (The Docker proxy holds
    attempt 1 between two steps while the sweeper's and the other worker's writes are made.)"""
    build = _queued(ready_version)
    outcome = []
    with DockerProxy() as proxy:
        proxy.hold = b"Step 2/"
        if ending == "fails":
            proxy.cut = ("drop", b"Step 2/")
        monkeypatch.setenv("DOCKER_HOST", proxy.url)
        runner = threading.Thread(target=lambda: outcome.append(run_image_build(build.pk)))
        runner.start()
        try:
            assert proxy.held.wait(timeout=120), ImageBuild.objects.get(pk=build.pk).log
            assert services.transition(build.pk, BuildStatus.BUILDING, BuildStatus.QUEUED, heartbeat_at=None)
            assert services.claim(build.pk)  # attempt 2, on another worker
            log_of_attempt_2 = ImageBuild.objects.get(pk=build.pk).log
        finally:
            proxy.release.set()
            runner.join(timeout=300)
    build.refresh_from_db()
    assert outcome == ["superseded"]
    assert (build.status, build.attempts, build.digest, build.error) == (BuildStatus.BUILDING, 2, "", "")
    assert build.log == log_of_attempt_2
    assert not AuditEvent.objects.filter(action="image_build.finish", target_id=str(build.pk)).exists()


def test_a_build_lost_too_often_fails_instead_of_looping(ready_version, settings):
    build = _queued(ready_version)
    stale = timezone.now() - timedelta(seconds=settings.SLIPWAY_BUILD_STALE_S + 60)
    attempts = settings.SLIPWAY_BUILD_MAX_ATTEMPTS
    ImageBuild.objects.filter(pk=build.pk).update(status=BuildStatus.PUSHING, heartbeat_at=stale, attempts=attempts)
    services.recover_stale_builds(actor=Actor.system())
    build.refresh_from_db()
    assert build.status == BuildStatus.FAILED and "lost" in build.error


def test_a_registry_refusing_the_credentials_fails_with_what_to_check(
    ready_version, docker_client, auth_registry, settings
):
    settings.SLIPWAY_REGISTRY = auth_registry
    settings.SLIPWAY_REGISTRY_USERNAME, settings.SLIPWAY_REGISTRY_PASSWORD = "slipway", "wrong-password"
    build = _queued(ready_version, registry=auth_registry)
    assert run_image_build(build.pk) == "failed"
    build.refresh_from_db()
    assert "refused the credentials" in build.error and "SLIPWAY_REGISTRY_PASSWORD" in build.error
    assert "wrong-password" not in build.error + build.log


def test_a_registry_that_wants_credentials_when_none_are_set_says_which_settings_to_set(
    ready_version, docker_client, auth_registry, settings
):
    settings.SLIPWAY_REGISTRY = auth_registry
    settings.SLIPWAY_REGISTRY_USERNAME, settings.SLIPWAY_REGISTRY_PASSWORD = "", ""
    build = _queued(ready_version, registry=auth_registry)
    assert run_image_build(build.pk) == "failed"
    build.refresh_from_db()
    assert build.error.startswith(f"The registry {auth_registry} wants a user name and password"), build.error
    assert "SLIPWAY_REGISTRY_USERNAME" in build.error and "SLIPWAY_REGISTRY_PASSWORD" in build.error


def test_a_registry_with_credentials_gets_the_image_and_never_sees_them_logged(
    ready_version, docker_client, auth_registry, settings
):
    # Pushed to the open registry first: where the two share their storage (see auth_registry), the layers
    # are then in place and the push with credentials sends the manifest; every request still needs them.
    unauthenticated = _queued(ready_version)
    assert run_image_build(unauthenticated.pk) == "succeeded", ImageBuild.objects.get(pk=unauthenticated.pk).error
    ImageBuild.objects.filter(pk=unauthenticated.pk).update(status=BuildStatus.FAILED)  # one live build per image
    settings.SLIPWAY_REGISTRY = auth_registry
    settings.SLIPWAY_REGISTRY_USERNAME, settings.SLIPWAY_REGISTRY_PASSWORD = "slipway", "s3cret-pa55"
    build = _queued(ready_version, registry=auth_registry, tag_suffix="-auth")  # not the shared storage's tag
    assert run_image_build(build.pk) == "succeeded", ImageBuild.objects.get(pk=build.pk).error
    build.refresh_from_db()
    assert build.digest.startswith("sha256:") and not build.cache_hit
    assert "s3cret-pa55" not in build.log
    assert not AuditEvent.objects.filter(after__icontains="s3cret").exists()

    repository, tag = build.image_ref.split("/", 1)[1].rsplit(":", 1)
    manifest = f"http://{auth_registry}/v2/{repository}/manifests/{tag}"
    accept = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    assert requests.head(manifest, headers=accept, timeout=10).status_code == 401
    held = requests.head(manifest, headers=accept, auth=("slipway", "s3cret-pa55"), timeout=10)
    assert held.status_code == 200 and held.headers["Docker-Content-Digest"] == build.digest


def test_a_build_past_its_time_limit_is_stopped(ready_version, docker_client, settings):
    # An index that refuses connections keeps pip retrying well past the limit.
    settings.SLIPWAY_BUILD_TIMEOUT_S = 10
    settings.SLIPWAY_PIP_OFFLINE = False
    settings.SLIPWAY_PIP_INDEX_URL = "http://127.0.0.1:9/simple"
    settings.SLIPWAY_WHEELHOUSE = ""
    build = _queued(ready_version, tag_suffix="-slow")
    assert run_image_build(build.pk) == "failed"
    build.refresh_from_db()
    assert "longer than 10s" in build.error and "SLIPWAY_BUILD_TIMEOUT_S" in build.error


def test_another_base_image_or_runtime_is_built_not_taken_for_a_cache_hit(ready_version, docker_client, settings):
    """The registry's copy of the version's image was built from another base image (an operator moved
    SLIPWAY_BASE_IMAGE_CPU to a patched one) or another runtime (Slipway was upgraded): a new build must
    make an image from what its row says, not answer with the old one as a cache hit."""
    first = _queued(ready_version)
    assert run_image_build(first.pk) == "succeeded", ImageBuild.objects.get(pk=first.pk).error

    patched = f"{settings.SLIPWAY_BASE_IMAGE_CPU.rsplit(':', 1)[0]}:patched-{ready_version.model.name}"
    docker_client.images.get(settings.SLIPWAY_BASE_IMAGE_CPU).tag(patched)
    try:
        second = _queued(ready_version, base_image=patched)
        assert run_image_build(second.pk) == "succeeded", ImageBuild.objects.get(pk=second.pk).error
    finally:
        docker_client.images.remove(patched)
    first.refresh_from_db()
    second.refresh_from_db()
    assert not second.cache_hit, "the image in the registry was built from the old base image"
    assert second.image_ref != first.image_ref and second.digest != first.digest
    image = docker_client.images.get(second.image_ref)
    assert image.labels["io.slipway.base-image"] == patched
    assert image.labels["io.slipway.runtime.version"] == second.runtime_version
    assert docker_client.images.get(first.image_ref).labels["io.slipway.base-image"] == settings.SLIPWAY_BASE_IMAGE_CPU
