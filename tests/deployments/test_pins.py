"""Pins: a deployment rolled back refuses promotions until someone unpins it.

The pin is an effect of the rollback, so it comes with it: a rollback that is rejected,
expires, is aborted or fails pins nothing, and the page never says "rolled back" when
nothing was. No worker here: the engine's last step is committed by hand, as in test_ledger.
"""

from __future__ import annotations

import pytest
from django.utils import timezone

from controlplane.audit import Actor
from controlplane.models import AuditEvent, Role, RoleBinding
from deployments import approvals, engine, services
from deployments.engine import Step
from deployments.models import ApprovalRequest, Deployment, Rollout, RolloutState
from registry.models import Model
from tests.factories import UserFactory, bulk_versions

pytestmark = pytest.mark.django_db


@pytest.fixture
def rita(db):
    return UserFactory(username="rita")


def served(rollout: Rollout) -> None:
    """The rollout ended as the worker ends it when its release serves."""
    Rollout.objects.filter(pk=rollout.pk).update(state=RolloutState.SUCCEEDED, finished_at=timezone.now())
    Deployment.objects.filter(pk=rollout.deployment_id).update(current_release=rollout.release)


def two_releases(rita, env: str, **protection) -> Deployment:
    """iris in `env`, release 2 serving and release 1 before it."""
    environment = services.create_environment(env, actor=Actor.system(), **protection)
    RoleBinding.objects.create(user=rita, environment=environment, role=Role.DEPLOYER)
    bulk_versions(Model.objects.get_or_create(name="iris", defaults={"created_by": rita})[0], 2, uploaded_by=rita)
    for version in (1, 2):
        served(services.deploy("iris", env, version, actor=Actor(user=rita))[1])
    return Deployment.objects.get(model__name="iris", environment=environment)


def pins() -> list[str]:
    return list(AuditEvent.objects.filter(action="deployment.pin").values_list("message", flat=True))


def test_a_rejected_rollback_pins_nothing_and_says_nothing_was_rolled_back(rita):
    deployment = two_releases(rita, "prod", required_approvals=1)
    amy = UserFactory(username="amy")
    RoleBinding.objects.create(user=amy, environment=deployment.environment, role=Role.APPROVER)

    deployment, rollout, _ = services.rollback(deployment, actor=Actor(user=rita), reason="v2 drifts")
    assert not deployment.pinned  # nothing was rolled back yet: a promote is refused by the rollout itself
    request = ApprovalRequest.objects.get(rollout=rollout)
    approvals.decide(request, actor=Actor(user=amy), decision="reject", comment="v2 is fine")

    deployment.refresh_from_db()
    assert (deployment.pinned, deployment.pinned_reason) == (False, "")
    assert pins() == []


def test_an_aborted_rollback_pins_nothing(rita):
    deployment = two_releases(rita, "dev")
    deployment, rollout, _ = services.rollback(deployment, actor=Actor(user=rita), reason="v2 drifts")
    services.abort_rollout(rollout, actor=Actor(user=rita))
    deployment.refresh_from_db()
    assert not deployment.pinned and pins() == []


def test_a_rollback_pins_the_deployment_when_its_release_serves(rita):
    deployment = two_releases(rita, "dev")
    rollout = services.rollback(deployment, actor=Actor(user=rita), reason="v2 drifts", to_release=1)[1]
    Rollout.objects.filter(pk=rollout.pk).update(state=RolloutState.PROGRESSING, lease_owner="me")
    rollout.refresh_from_db()

    step = Step(fields={"state": RolloutState.SUCCEEDED}, deployment={"current_release_id": rollout.release_id})
    assert engine.commit(rollout, step, "me") == RolloutState.SUCCEEDED

    deployment.refresh_from_db()
    assert deployment.pinned and deployment.pinned_reason == "rolled back to release 1: v2 drifts"
    assert pins() == ["rolled back to release 1: v2 drifts"]
    event = AuditEvent.objects.get(action="deployment.pin")
    assert event.environment == "dev" and event.after["rollout"] == rollout.pk


def test_unpin_records_only_a_pin_that_it_took_off(rita):
    deployment = two_releases(rita, "dev")
    _, was_pinned = services.unpin(deployment, actor=Actor(user=rita))  # nothing pinned it: nothing happens
    assert not was_pinned and not AuditEvent.objects.filter(action="deployment.unpin").exists()

    # Pinned after `deployment` was read: what it says in hand is stale, what the locked row says counts.
    Deployment.objects.filter(pk=deployment.pk).update(pinned=True, pinned_reason="rolled back to release 1: drift")
    unpinned, was_pinned = services.unpin(deployment, actor=Actor(user=rita))
    assert was_pinned and not unpinned.pinned
    _, was_pinned = services.unpin(deployment, actor=Actor(user=rita))  # a second click, or a colleague a moment later
    assert not was_pinned
    [event] = AuditEvent.objects.filter(action="deployment.unpin")
    assert event.before == {"pinned": True, "pinned_reason": "rolled back to release 1: drift"}
    assert event.actor == "rita" and event.environment == "dev"
