"""A person's pause stops the step's clock: a step's deadline counts only the time it ran.

The rollout waits at a traffic step for its release to get ready (the plan's progress_deadline);
someone pauses it for longer than that deadline, then resumes: the step must go on waiting for
the rest of its deadline, not fail at once. The engine's clock is read from the stored rollout,
so no target is needed: `elapsed()` is what the step compares with its deadline.
"""

from __future__ import annotations

import time

import pytest
from django.utils import timezone

from controlplane.audit import Actor
from controlplane.models import Role, RoleBinding
from deployments import engine, services
from deployments.models import Deployment, Rollout, RolloutState
from registry.models import Model
from tests.factories import UserFactory, bulk_versions

pytestmark = pytest.mark.django_db

DEADLINE_S = 2
CANARY = {"strategy": "canary", "progress_deadline": f"{DEADLINE_S}s", "steps": [{"set_weight": 20}, {"pause": {}}]}


@pytest.fixture
def rita(db):
    user = UserFactory(username="rita")
    env = services.create_environment("dev", actor=Actor.system())
    RoleBinding.objects.create(user=user, environment=env, role=Role.DEPLOYER)
    bulk_versions(Model.objects.create(name="iris", created_by=user), 2, uploaded_by=user)
    first = services.deploy("iris", "dev", 1, actor=Actor(user=user))[1]
    Rollout.objects.filter(pk=first.pk).update(state=RolloutState.SUCCEEDED, finished_at=timezone.now())
    Deployment.objects.filter(pk=first.deployment_id).update(current_release=first.release)
    return Actor(user=user)


def waiting_at_the_first_step(actor) -> Rollout:
    """The canary's first step has just begun: its release is starting, not yet ready."""
    rollout = services.deploy("iris", "dev", 2, actor=actor, plan=CANARY)[1]
    Rollout.objects.filter(pk=rollout.pk).update(
        state=RolloutState.PROGRESSING, step_index=0, step_started_at=timezone.now()
    )
    rollout.refresh_from_db()
    return rollout


def clock(rollout: Rollout) -> float:
    return engine.Reconciler(Rollout.objects.get(pk=rollout.pk)).elapsed()


def test_a_pause_longer_than_the_deadline_leaves_the_step_its_time_on_resume(rita):
    rollout = waiting_at_the_first_step(rita)
    services.pause_rollout(rollout, actor=rita)
    time.sleep(DEADLINE_S + 0.5)  # a person looks at the canary for longer than the step may take
    services.resume_rollout(rollout, actor=rita)
    assert clock(rollout) < 0.5  # it ran for a moment before the pause, and that is all


def test_a_promote_now_after_a_long_pause_gives_the_full_weight_its_own_deadline(rita):
    rollout = waiting_at_the_first_step(rita)
    services.pause_rollout(rollout, actor=rita)
    time.sleep(DEADLINE_S + 0.5)
    services.promote_rollout_now(rollout, actor=rita)
    assert clock(rollout) < 0.5
