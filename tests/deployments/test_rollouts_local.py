"""The rollout engine end to end on the local target: a real worker, real runtime processes, real traffic."""

from __future__ import annotations

import io
import os
import signal
import threading
from pathlib import Path

import httpx
import pytest
from django.core.management import call_command
from django.test import Client

from controlplane.audit import verify_chain
from controlplane.models import AuditEvent
from deployments import engine
from deployments.engine import deployment_ref
from deployments.models import Deployment, ImageBuild, Rollout
from deployments.targets import get_target
from registry.models import ModelVersion
from tests.conftest import wait_for
from tests.deployments.rollouts import ROW, answers, deploy, serving, upload, wait_state

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def test_deploy_canary_automatic_rollback_and_one_click_rollback(api, dev, model_name, model_dir):
    v1, v2, v3 = (upload(api, model_name, model_dir[k]) for k in ("one", "two", "broken"))

    # v1: the first deploy goes straight to all traffic
    first = deploy(api, model_name, v1)
    wait_state(first["rollout"]["id"], "succeeded")
    deployment = api.get(f"/api/v1/deployments/{first['id']}/").json()
    endpoint = deployment["endpoint"]
    assert deployment["state"] == "serving" and deployment["current_release"]["version"] == v1
    assert endpoint.startswith("http://127.0.0.1:")
    assert answers(endpoint, model_name, 5) == [1.0] * 5

    # v2 as a canary: a quarter of the traffic, then a pause until someone resumes
    plan = {"strategy": "canary", "steps": [{"set_weight": 25}, {"pause": {}}]}
    second = deploy(api, model_name, v2, plan=plan)
    rollout_id = second["rollout"]["id"]
    paused = wait_state(rollout_id, "paused")
    assert paused.weight == 25
    seen = answers(endpoint, model_name, 40)
    assert seen.count(2.0) == 10 and seen.count(1.0) == 30  # weights are exact on the local router
    assert api.post(f"/api/v1/rollouts/{rollout_id}/resume/").status_code == 200
    wait_state(rollout_id, "succeeded")
    assert answers(endpoint, model_name, 10) == [2.0] * 10
    # release 1 stays up without traffic for a while, so a rollback to it only re-routes
    status = get_target("local").status(deployment_ref(Deployment.objects.get(pk=first["id"])))
    assert serving(status) == {2: 100} and status.releases.keys() == {1, 2}

    # v3 fails on real traffic: the analysis catches it and rolls back on its own
    plan = {
        "strategy": "canary",
        "steps": [{"set_weight": 50}, {"analysis": {"duration": "3s", "max_error_rate": 0.05, "min_requests": 4}}],
    }
    third = deploy(api, model_name, v3, plan=plan)
    rollout_id = third["rollout"]["id"]
    stop = threading.Event()

    def traffic():
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                client.post(f"{endpoint}/v2/models/{model_name}/infer", json=ROW)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        ended = wait_state(rollout_id, "rolled_back")
    finally:
        stop.set()
        sender.join()
    assert "error rate" in ended.failure_reason
    failed = [check for check in ended.analysis["checks"] if not check["passed"]]
    assert [check["name"] for check in failed] == ["error_rate"]
    assert failed[0]["measured"] > failed[0]["threshold"]
    body = api.get(f"/api/v1/rollouts/{rollout_id}/").json()
    assert body["state"] == "rolled_back" and "error rate" in body["failure_reason"]
    assert answers(endpoint, model_name, 10) == [2.0] * 10  # v2 still serves
    assert api.get(f"/api/v1/deployments/{first['id']}/").json()["current_release"]["number"] == 2

    # one click back to v1: a new release that reuses release 1, no build, and the deployment pinned
    ref = deployment_ref(Deployment.objects.get(pk=first["id"]))
    warm_pid = get_target("local").status(ref).releases[1].replicas[0].name
    response = api.post(
        f"/api/v1/deployments/{first['id']}/rollback/", {"reason": "v2 drifts on Mondays"}, format="json"
    )
    assert response.status_code == 200, response.json()
    back = response.json()
    assert back["rollout"]["version"] == v1 and back["pinned"] is False  # pinned once release 1 serves again
    wait_state(back["rollout"]["id"], "succeeded")
    assert api.get(f"/api/v1/deployments/{first['id']}/").json()["pinned"] is True
    assert answers(endpoint, model_name, 10) == [1.0] * 10
    assert ImageBuild.objects.count() == 0
    # release 1 was still up without traffic: the rollback took its process over instead of starting one
    status = get_target("local").status(ref)
    assert serving(status) == {1: 100} and status.releases[1].replicas[0].name == warm_pid
    assert status.releases.keys() == {1}  # and left nothing of release 2 behind

    history = api.get(f"/api/v1/deployments/{first['id']}/releases/").json()["results"]
    assert [(r["number"], r["kind"], r["version"], r["rollout"]["state"]) for r in history] == [
        (4, "rollback", v1, "succeeded"),
        (3, "deploy", v3, "rolled_back"),
        (2, "deploy", v2, "succeeded"),
        (1, "deploy", v1, "succeeded"),
    ]
    assert history[0]["source"] == 1 and history[0]["reason"] == "v2 drifts on Mondays"
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"deployment.deploy", "deployment.rollback", "rollout.resume", "rollout.rolled_back"} <= actions
    assert verify_chain() is None


def test_promote_pause_abort_and_promote_now(api, dev, model_name, model_dir):
    assert (
        api.post("/api/v1/environments/", {"name": "staging", "promotes_from": "dev"}, format="json").status_code == 201
    )
    v1, v2 = (upload(api, model_name, model_dir[k]) for k in ("one", "two"))
    first = deploy(api, model_name, v1)
    wait_state(first["rollout"]["id"], "succeeded")

    # promote dev's release to staging in one call
    response = api.post(f"/api/v1/deployments/{first['id']}/promote/", {}, format="json")
    assert response.status_code == 201, response.json()
    staging = response.json()
    assert staging["environment"] == "staging" and staging["rollout"]["version"] == v1
    wait_state(staging["rollout"]["id"], "succeeded")
    staging_endpoint = api.get(f"/api/v1/deployments/{staging['id']}/").json()["endpoint"]
    assert answers(staging_endpoint, model_name, 3) == [1.0] * 3

    # a canary paused by a person, then aborted: v1 serves alone again
    plan = {"strategy": "canary", "steps": [{"set_weight": 50}, {"pause": {"duration": "10m"}}]}
    second = deploy(api, model_name, v2, plan=plan)
    rollout_id = second["rollout"]["id"]
    wait_for(lambda: Rollout.objects.get(pk=rollout_id).weight == 50, timeout=60, what="the canary at 50%")
    assert api.post(f"/api/v1/rollouts/{rollout_id}/pause/").json()["state"] == "paused"
    assert api.post(f"/api/v1/rollouts/{rollout_id}/pause/").status_code == 409
    aborted = api.post(f"/api/v1/rollouts/{rollout_id}/abort/", {"reason": "wrong day"}, format="json").json()
    assert aborted["state"] == "reverting"
    wait_state(rollout_id, "aborted")
    endpoint = api.get(f"/api/v1/deployments/{first['id']}/").json()["endpoint"]
    assert answers(endpoint, model_name, 6) == [1.0] * 6

    # the same canary again, promoted now: straight to all traffic, skipping the long pause
    third = deploy(api, model_name, v2, plan=plan)
    rollout_id = third["rollout"]["id"]
    wait_for(lambda: Rollout.objects.get(pk=rollout_id).weight == 50, timeout=60, what="the canary at 50%")
    assert api.post(f"/api/v1/rollouts/{rollout_id}/promote/").status_code == 200
    wait_state(rollout_id, "succeeded", timeout=60)
    assert answers(endpoint, model_name, 6) == [2.0] * 6

    # the audit log read per environment: people's actions and the engine's outcomes alike
    def in_env(name: str) -> list[str]:
        return [e["action"] for e in api.get(f"/api/v1/audit/?environment={name}").json()["results"]]

    assert in_env("staging") == ["rollout.succeeded", "deployment.promote", "deployment.create", "environment.create"]
    assert in_env("dev")[:6] == [
        "rollout.succeeded",
        "rollout.promote",
        "deployment.deploy",
        "rollout.aborted",
        "rollout.abort",
        "rollout.pause",
    ]
    assert verify_chain() is None


def test_a_release_that_never_gets_ready_is_rolled_back(api, dev, model_name, model_dir, settings):
    v1, v2 = (upload(api, model_name, model_dir[k]) for k in ("one", "two"))
    first = deploy(api, model_name, v1)
    wait_state(first["rollout"]["id"], "succeeded")
    endpoint = api.get(f"/api/v1/deployments/{first['id']}/").json()["endpoint"]

    # v2's stored file is damaged after validation: the runtime refuses it (SHA-256 mismatch)
    damaged = ModelVersion.objects.get(model__name=model_name, version=v2)
    with damaged.artifact.open("ab") as fh:
        fh.write(b"bit rot")
    second = deploy(api, model_name, v2, plan={"strategy": "rolling", "progress_deadline": "60s"})
    ended = wait_state(second["rollout"]["id"], "rolled_back")
    assert "Release 2 failed" in ended.failure_reason
    assert "SHA-256" in ended.failure_reason or "sha256" in ended.failure_reason.lower()
    assert answers(endpoint, model_name, 4) == [1.0] * 4


def test_blue_green_brings_the_new_release_up_without_traffic_then_switches(api, dev, model_name, model_dir):
    v1, v2 = (upload(api, model_name, model_dir[k]) for k in ("one", "two"))
    first = deploy(api, model_name, v1)
    wait_state(first["rollout"]["id"], "succeeded")
    endpoint = api.get(f"/api/v1/deployments/{first['id']}/").json()["endpoint"]

    plan = {"strategy": "blue_green", "auto_switch": False, "keep_old": "1s", "keep_previous": 0}
    rollout_id = deploy(api, model_name, v2, plan=plan)["rollout"]["id"]
    paused = wait_state(rollout_id, "paused")  # verified and waiting for someone to switch
    ref = deployment_ref(Deployment.objects.get(pk=first["id"]))
    status = get_target("local").status(ref)
    assert status.releases[2].ready == 1 and serving(status) == {1: 100}  # green is up, blue takes everything
    assert paused.weight == 0
    assert answers(endpoint, model_name, 6) == [1.0] * 6

    assert api.post(f"/api/v1/rollouts/{rollout_id}/resume/").status_code == 200
    wait_for(lambda: Rollout.objects.get(pk=rollout_id).weight == 100, timeout=30, what="the switch")
    assert answers(endpoint, model_name, 6) == [2.0] * 6  # switched at once, for every request
    wait_state(rollout_id, "succeeded")
    assert get_target("local").status(ref).releases.keys() == {2}  # the old release kept 1 s, then removed


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its parent (the worker) has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except FileNotFoundError:
        return True


def test_a_serving_replica_that_dies_is_shown_and_started_again(api, alice, dev, model_name, model_dir):
    """After its rollout no step watches a release: the sweeper does, or the page says ready for ever."""
    v1 = upload(api, model_name, model_dir["one"])
    first = deploy(api, model_name, v1)
    rollout_id = first["rollout"]["id"]
    wait_state(rollout_id, "succeeded")
    endpoint = api.get(f"/api/v1/deployments/{first['id']}/").json()["endpoint"]
    ref = deployment_ref(Deployment.objects.get(pk=first["id"]))
    (replica,) = get_target("local").status(ref).releases[1].replicas
    pid = int(replica.name.removeprefix("pid "))
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(pid), timeout=10, what="the replica to die")

    engine.sweep()
    facts = Rollout.objects.get(pk=rollout_id).status["releases"]["1"]
    assert facts["ready"] == 0 and not facts["done"], facts
    assert facts["warnings"][0].startswith("CrashLoopBackOff: replica 0 exited 1 time ("), facts
    browser = Client()
    browser.force_login(alice)
    page = browser.get(f"/deployments/{first['id']}/live/").content.decode()
    assert "CrashLoopBackOff" in page and "no replica is ready" in page
    assert api.get(f"/api/v1/deployments/{first['id']}/").json()["state"] == "down"  # not "serving"

    def serving_again():
        engine.sweep()
        return Rollout.objects.get(pk=rollout_id).status["releases"]["1"]["done"]

    wait_for(serving_again, timeout=60, interval=0.5, what="the sweeper to start the replica again")
    assert answers(endpoint, model_name, 3) == [1.0] * 3
    rollout = Rollout.objects.get(pk=rollout_id)
    assert rollout.state == "succeeded" and rollout.status["releases"]["1"]["warnings"] == []
    body = api.get(f"/api/v1/deployments/{first['id']}/").json()
    assert (body["state"], body["endpoint"]) == ("serving", endpoint)

    # Stopped on purpose (make clean): said so, with no endpoint, and not started again.
    call_command("stop_local_deployments", stdout=io.StringIO())
    engine.sweep()
    (body,) = api.get("/api/v1/deployments/").json()["results"]
    assert (body["state"], body["endpoint"], body["current_release"]["number"]) == ("stopped", "", 1)
    page = browser.get(f"/deployments/{first['id']}/live/").content.decode()
    assert "nothing of release 1 runs any more" in page and 'id="endpoint"' not in page  # (the timeline keeps it)
    listed = browser.get("/deployments/").content.decode()
    assert 'data-state="stopped"' in listed and endpoint not in listed
    assert get_target("local").status(ref).releases == {}
