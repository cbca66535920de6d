"""Two-person approval in a protected environment, through the API (and the engine for pause steps).

prod needs two approvals. rita deploys there; amy and ben approve; vic only views, dan only deploys;
otto approves in another team's environment and has no role in prod. Nothing reaches a worker:
the rollout an approval lets go is enqueued on commit, and a test's transaction never commits.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.utils import timezone
from rest_framework.test import APIClient

from controlplane.audit import Actor
from controlplane.models import AuditEvent, Role, RoleBinding
from controlplane.roles import grant_role
from controlplane.tokens import create_token
from deployments import approvals, engine, services
from deployments.approvals import waiting_count
from deployments.ledger import record_serving
from deployments.models import ApprovalRequest, Deployment, Environment, Release, Rollout
from registry.models import Model, ModelVersion
from tests.conftest import bearer_client
from tests.factories import UserFactory, bulk_versions

pytestmark = pytest.mark.django_db

PEOPLE = {
    "rita": Role.DEPLOYER,
    "amy": Role.APPROVER,
    "ben": Role.APPROVER,
    "cat": Role.ADMIN,
    "vic": Role.VIEWER,
    "dan": Role.DEPLOYER,
}


@pytest.fixture
def prod(db) -> Environment:
    system = Actor.system()
    env = services.create_environment("prod", actor=system, required_approvals=2, approval_timeout_s=3600)
    lab = services.create_environment("lab", actor=system)
    maker = UserFactory(username="maker", password=None)
    bulk_versions(Model.objects.create(name="iris", created_by=maker), 3, uploaded_by=maker)
    bulk_versions(Model.objects.create(name="bert", created_by=maker), 1, uploaded_by=maker)
    for name, role in PEOPLE.items():
        RoleBinding.objects.create(user=UserFactory(username=name, password=None), environment=env, role=role)
    RoleBinding.objects.create(user=UserFactory(username="otto", password=None), environment=lab, role=Role.APPROVER)
    return env


@pytest.fixture
def as_(prod):
    """as_("amy"): an API client with amy's token (admin scope: all amy may do)."""
    clients = {}

    def client(name: str) -> APIClient:
        if name not in clients:
            user = UserFactory(username=name, password=None)
            clients[name] = bearer_client(create_token(user, "laptop", actor=Actor(user=user)).raw)
        return clients[name]

    return client


def deploy(as_, who="rita", version=1, **extra) -> dict:
    body = {"model": "iris", "environment": "prod", "version": version, "reason": "Q3 model", **extra}
    response = as_(who).post("/api/v1/deployments/", body, format="json")
    assert response.status_code in (200, 201), response.json()
    return response.json()


def pending(as_, who="amy") -> dict:
    response = as_(who).get("/api/v1/approvals/?state=pending")
    assert response.status_code == 200
    [request] = response.json()["results"]
    return request


def decide(as_, who: str, request_id: int, verb: str = "approve", comment: str = ""):
    return as_(who).post(f"/api/v1/approvals/{request_id}/{verb}/", {"comment": comment}, format="json")


def actions_about(request_id: int) -> list[str]:
    return list(
        AuditEvent.objects.filter(target_type="approval", target_id=str(request_id))
        .order_by("id")
        .values_list("action", flat=True)
    )


# --- Asking ----------------------------------------------------------------------------------
def test_a_deploy_waits_for_approval_with_a_snapshot_of_what_would_change(as_):
    body = deploy(as_, config={"replicas": 2})
    assert body["rollout"]["state"] == "awaiting_approval"
    request = pending(as_)
    version = ModelVersion.objects.get(model__name="iris", version=1)
    assert request["state"] == "pending" and request["required"] == 2 and request["approvals"] == 0
    assert request["environment"] == "prod" and request["rollout"] == body["rollout"]["id"]
    assert request["requester"].startswith("rita") and request["reason"] == "Q3 model"
    change = request["change"]
    assert change["kind"] == "deploy" and change["model"] == "iris"
    assert change["version"] == 1 and change["sha256"] == version.sha256
    assert change["image"] == ""  # the local target runs the artifact itself
    assert change["settings"]["replicas"] == 2
    assert change["previous"] is None
    event = AuditEvent.objects.get(action="approval.request")
    assert event.environment == "prod" and event.message == "Q3 model"
    assert event.after["version"] == 1 and event.after["sha256"] == version.sha256


def test_the_snapshot_names_what_serves_now(as_):
    first = deploy(as_)
    request_id = pending(as_)["id"]
    assert decide(as_, "amy", request_id).status_code == 200
    assert decide(as_, "ben", request_id).status_code == 200
    settle(first["rollout"]["id"])
    deploy(as_, version=2)
    change = pending(as_)["change"]
    assert change["version"] == 2 and change["previous"]["version"] == 1 and change["previous"]["release"] == 1


# --- Deciding ---------------------------------------------------------------------------------
def test_the_requester_cannot_approve_their_own_rollout(as_):
    deploy(as_, who="cat")  # cat is admin (so also approver) of prod
    request_id = pending(as_)["id"]
    response = decide(as_, "cat", request_id)
    assert response.status_code == 403
    assert "approvals must come from 2 approver(s) other than you" in response.json()["error"]
    assert ApprovalRequest.objects.get(pk=request_id).decisions.count() == 0


def test_one_approval_keeps_it_pending_and_the_same_approver_cannot_count_twice(as_):
    rollout_id = deploy(as_)["rollout"]["id"]
    request_id = pending(as_)["id"]
    first = decide(as_, "amy", request_id, comment="looks right")
    assert first.status_code == 200, first.json()
    assert first.json()["state"] == "pending" and first.json()["approvals"] == 1
    again = decide(as_, "amy", request_id)
    assert again.status_code == 409
    assert "already decided" in again.json()["error"]
    assert Rollout.objects.get(pk=rollout_id).state == "awaiting_approval"


def test_two_approvers_start_the_rollout_and_the_release_records_them_in_order(as_):
    body = deploy(as_)
    rollout_id, deployment_id = body["rollout"]["id"], body["id"]
    request_id = pending(as_)["id"]
    assert decide(as_, "ben", request_id).status_code == 200
    granted = decide(as_, "amy", request_id)
    assert granted.status_code == 200
    assert granted.json()["state"] == "approved" and granted.json()["rollout_state"] == "pending"
    assert [d["approver"].split()[0] for d in granted.json()["decisions"]] == ["ben", "amy"]
    release = Release.objects.get(rollout__pk=rollout_id)
    assert release.approved_by == ["ben", "amy"]  # usernames, as the field promises
    assert Rollout.objects.get(pk=rollout_id).state == "pending"
    assert AuditEvent.objects.get(action="approval.granted").after["approved_by"] == ["ben", "amy"]

    settle(rollout_id)
    for url in ("/api/v1/environments/prod/serving/", f"/api/v1/deployments/{deployment_id}/serving/"):
        [row] = as_("vic").get(url).json()["results"]
        assert row["approved_by"] == ["ben", "amy"], url
        assert row["release"] == 1 and row["recorded"] is True


def test_a_rejection_needs_a_comment_and_ends_the_rollout(as_):
    rollout_id = deploy(as_)["rollout"]["id"]
    request_id = pending(as_)["id"]
    bare = decide(as_, "amy", request_id, "reject")
    assert bare.status_code == 400
    assert bare.json()["fields"] == {"comment": ["required"]}
    response = decide(as_, "amy", request_id, "reject", comment="not during the sale")
    assert response.status_code == 200
    assert response.json()["state"] == "rejected"
    rollout = Rollout.objects.get(pk=rollout_id)
    assert rollout.state == "aborted" and "not during the sale" in rollout.failure_reason
    assert rollout.finished_at is not None
    assert decide(as_, "ben", request_id).status_code == 409  # nothing left to decide


def test_an_expired_request_cannot_be_approved_and_its_rollout_ends(as_):
    rollout_id = deploy(as_)["rollout"]["id"]
    request_id = pending(as_)["id"]
    ApprovalRequest.objects.filter(pk=request_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = decide(as_, "amy", request_id)
    assert response.status_code == 409
    assert f"Approval request #{request_id} is expired" in response.json()["error"]
    assert ApprovalRequest.objects.get(pk=request_id).state == "expired"
    rollout = Rollout.objects.get(pk=rollout_id)
    assert rollout.state == "aborted" and "expired" in rollout.failure_reason


def test_the_sweeper_expires_only_requests_whose_time_is_up(as_):
    deploy(as_)
    due = pending(as_)["id"]
    deploy(as_, model="bert")
    later = ApprovalRequest.objects.exclude(pk=due).get().pk
    ApprovalRequest.objects.filter(pk=due).update(expires_at=timezone.now() - timedelta(minutes=1))
    assert approvals.expire_due() == [due]
    assert approvals.expire_due() == []  # once
    assert ApprovalRequest.objects.get(pk=due).state == "expired"
    assert ApprovalRequest.objects.get(pk=later).state == "pending"


def test_aborting_a_rollout_that_waits_cancels_its_request(as_):
    rollout_id = deploy(as_)["rollout"]["id"]
    request_id = pending(as_)["id"]
    response = as_("rita").post(f"/api/v1/rollouts/{rollout_id}/abort/", {"reason": "wrong version"}, format="json")
    assert response.status_code == 200
    assert response.json()["state"] == "aborted"
    assert ApprovalRequest.objects.get(pk=request_id).state == "cancelled"
    assert decide(as_, "amy", request_id).status_code == 409


@pytest.mark.parametrize(("who", "status"), [("vic", 403), ("dan", 403), ("rita", 403), ("otto", 404)])
def test_only_approvers_of_the_environment_decide(as_, who, status):
    deploy(as_)
    request_id = pending(as_)["id"]
    for verb in ("approve", "reject"):
        response = decide(as_, who, request_id, verb, comment="no")
        assert response.status_code == status, response.json()
        if status == 403 and who != "rita":
            assert "the approver role" in response.json()["error"]
        if status == 404:
            assert set(response.json()) <= {"error", "code"}  # nothing about the request
    assert ApprovalRequest.objects.get(pk=request_id).decisions.count() == 0


def test_a_viewer_who_rejects_without_a_comment_is_told_they_may_not(as_):
    """The role comes first: asking a viewer for a comment would suggest a comment is all they lack."""
    deploy(as_)
    response = decide(as_, "vic", pending(as_)["id"], "reject")
    assert response.status_code == 403
    assert "the approver role" in response.json()["error"]


def test_every_decision_is_audited_with_its_environment(as_):
    granted = deploy(as_)  # request, approve, approve, granted
    request_ids = [pending(as_)["id"]]
    decide(as_, "amy", request_ids[0])
    decide(as_, "ben", request_ids[0])
    settle(granted["rollout"]["id"])

    deploy(as_, version=2)  # request, reject
    request_ids.append(pending(as_)["id"])
    decide(as_, "amy", request_ids[1], "reject", comment="no")

    rollout_id = deploy(as_, version=3)["rollout"]["id"]  # request, cancel
    request_ids.append(pending(as_)["id"])
    as_("rita").post(f"/api/v1/rollouts/{rollout_id}/abort/")

    deploy(as_, version=3)  # request, expire
    request_ids.append(pending(as_)["id"])
    ApprovalRequest.objects.filter(pk=request_ids[3]).update(expires_at=timezone.now())
    approvals.expire_due()

    assert [actions_about(pk) for pk in request_ids] == [
        ["approval.request", "approval.approve", "approval.approve", "approval.granted"],
        ["approval.request", "approval.reject"],
        ["approval.request", "approval.cancel"],
        ["approval.request", "approval.expire"],
    ]
    events = AuditEvent.objects.filter(action__startswith="approval.")
    assert set(events.values_list("environment", flat=True)) == {"prod"}
    assert events.get(action="approval.reject").message == "no"


def waiting_for(*names: str) -> dict[str, int]:
    return {name: waiting_count(Actor(user=User.objects.get(username=name))) for name in names}


def test_the_navigation_counts_what_each_person_could_still_decide(as_, client, prod):
    system = Actor.system()
    UserFactory(username="root", password=None, is_superuser=True)  # admin everywhere, with no binding
    UserFactory(username="gus", password=None).groups.add(Group.objects.create(name="release-board"))
    grant_role(prod, Role.APPROVER, actor=system, group="release-board")  # an approver through a group
    UserFactory(username="eve", password=None)
    grant_role(None, Role.APPROVER, actor=system, user="eve")  # an approver in every environment
    everyone = ("amy", "ben", "cat", "rita", "vic", "dan", "otto", "root", "gus", "eve")
    assert set(waiting_for(*everyone).values()) == {0}
    deploy(as_)
    request_id = pending(as_)["id"]
    # Approvers and admins of prod; not who asked, not viewers or deployers, not another team's approver.
    assert waiting_for(*everyone) == {
        **{"amy": 1, "ben": 1, "cat": 1, "rita": 0, "vic": 0, "dan": 0, "otto": 0},
        **{"root": 1, "gus": 1, "eve": 1},
    }
    assert decide(as_, "amy", request_id).status_code == 200  # one of two: still pending, amy is done
    assert waiting_for("amy", "ben", "cat", "root") == {"amy": 0, "ben": 1, "cat": 1, "root": 1}
    ApprovalRequest.objects.filter(pk=request_id).update(requested_by=None)  # its asker's account deleted
    assert waiting_for("rita", "ben") == {"rita": 0, "ben": 1}  # rita is no approver
    client.force_login(User.objects.get(username="ben"))
    page = client.get("/models/").content.decode()
    assert '<span class="nav-count" title="1 waiting for your decision">1</span>' in page
    assert decide(as_, "ben", request_id).status_code == 200  # approved: nothing waits any more
    assert waiting_for("ben", "cat") == {"ben": 0, "cat": 0}
    assert "nav-count" not in client.get("/models/").content.decode()


# --- Pause steps ----------------------------------------------------------------------------------
CANARY = {"strategy": "canary", "steps": [{"set_weight": 20}, {"pause": {}}, {"set_weight": 60}]}


def test_with_pause_approvals_a_pause_step_waits_for_approvers_not_a_resume(as_, prod):
    Environment.objects.filter(pk=prod.pk).update(approve_pauses=True)
    first = deploy(as_)
    request_id = pending(as_)["id"]
    decide(as_, "amy", request_id)
    decide(as_, "ben", request_id)
    settle(first["rollout"]["id"])

    second = deploy(as_, version=2, plan=CANARY)
    start = pending(as_)["id"]
    decide(as_, "amy", start)
    decide(as_, "ben", start)
    rollout = Rollout.objects.get(pk=second["rollout"]["id"])
    pause_index = next(i for i, step in enumerate(rollout.steps) if step["kind"] == "pause")
    # The engine has moved 20% of traffic; the next tick meets the pause step. The local target
    # has nothing running for this deployment, so it answers with an empty status: nothing failed.
    Rollout.objects.filter(pk=rollout.pk).update(state="progressing", step_index=pause_index, weight=20)
    rollout.refresh_from_db()
    assert engine.advance(rollout.pk, rollout.revision) == "paused"

    request = pending(as_)
    assert request["kind"] == "pause" and request["step_index"] == pause_index and request["required"] == 2
    assert request["requester"] == "rita"  # who asked for the rollout, not the engine
    rollout_id = rollout.pk
    refused = as_("rita").post(f"/api/v1/rollouts/{rollout_id}/resume/")
    assert refused.status_code == 409 and "waits for 2 approval(s)" in refused.json()["error"]
    refused = as_("rita").post(f"/api/v1/rollouts/{rollout_id}/promote/")
    assert refused.status_code == 409 and "requires approvals at each pause step" in refused.json()["error"]
    assert decide(as_, "rita", request["id"]).status_code == 403  # still their rollout

    decide(as_, "amy", request["id"])
    assert Rollout.objects.get(pk=rollout_id).state == "paused"
    decide(as_, "ben", request["id"])
    rollout = Rollout.objects.get(pk=rollout_id)
    assert rollout.state == "progressing" and rollout.step_index == pause_index + 1


def settle(rollout_id: int) -> None:
    """End a rollout as the worker would: its release serves all traffic from now."""
    rollout = Rollout.objects.get(pk=rollout_id)
    with transaction.atomic():
        Rollout.objects.filter(pk=rollout_id).update(state="succeeded", finished_at=timezone.now(), weight=100)
        Deployment.objects.filter(pk=rollout.deployment_id).update(current_release=rollout.release_id)
        record_serving(rollout.deployment_id, {rollout.release_id: 100}, timezone.now())
