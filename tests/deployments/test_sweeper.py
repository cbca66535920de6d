"""The beat's sweeper: whatever one deployment's state holds, the others still get their turn."""

from __future__ import annotations

import datetime
import shutil

import pytest
from django.utils import timezone

from controlplane.audit import Actor
from deployments import engine, services
from deployments.models import Deployment, Rollout, RolloutState
from deployments.targets import local
from registry.models import Model
from tests.factories import UserFactory, bulk_versions

pytestmark = pytest.mark.django_db


def test_a_deployment_whose_local_state_cannot_be_read_does_not_stop_the_sweep(caplog):
    services.create_environment("dev", actor=Actor.system())
    rita = UserFactory(username="rita")
    for name in ("iris", "wine"):
        bulk_versions(Model.objects.create(name=name, created_by=rita), 1, uploaded_by=rita)
    # iris: served by its release once its rollout ended, but its folder holds a router.json without a pid.
    deployment, rollout, _ = services.deploy("iris", "dev", 1, actor=Actor.system())
    Rollout.objects.filter(pk=rollout.pk).update(state=RolloutState.SUCCEEDED, finished_at=timezone.now())
    Deployment.objects.filter(pk=deployment.pk).update(current_release=rollout.release)
    deployment.refresh_from_db()
    paths = local._paths(engine.deployment_ref(deployment))
    paths.root.mkdir(parents=True)
    try:
        paths.router.write_text("{}")
        # wine: a rollout whose worker died: overdue, the sweeper must hand it to a worker again.
        _, lost, _ = services.deploy("wine", "dev", 1, actor=Actor.system())
        Rollout.objects.filter(pk=lost.pk).update(next_at=timezone.now() - datetime.timedelta(hours=1))

        assert engine.sweep() == [lost.pk]
    finally:
        shutil.rmtree(paths.root)
    assert f"looking at {deployment}'s processes failed" in caplog.text
