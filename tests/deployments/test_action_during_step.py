"""A person acts on a rollout while a worker is in the middle of one of its steps.

The task their action enqueues finds the rollout leased and is dropped; the worker's step then
gives way to their change. Someone must go on from it at once, not the sweeper seconds later.
The worker's step is the test's own call to the engine; the person acts from a second connection
at the moment the step stores its result (Django's execute_wrapper): real PostgreSQL, real row
locks. Celery runs the tasks in the calling thread here (its task_always_eager setting), so what
each enqueues happens before the call returns.
"""

from __future__ import annotations

import time

import pytest
from django.db import connection

from controlplane.audit import Actor
from controlplane.celery import app
from controlplane.models import Role, RoleBinding
from deployments import engine, services
from deployments.models import Rollout, RolloutState
from registry.models import Model
from tests.concurrency import in_thread
from tests.factories import UserFactory, bulk_versions

CANARY = {"strategy": "canary", "steps": [{"set_weight": 20}, {"pause": {}}, {"set_weight": 60}]}


@pytest.fixture
def tasks_run_inline():
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


def test_an_abort_while_a_step_runs_is_acted_on_when_the_step_ends(live_db, tasks_run_inline):
    dev = services.create_environment("dev", actor=Actor.system())
    rita = UserFactory(username="rita")
    RoleBinding.objects.create(user=rita, environment=dev, role=Role.DEPLOYER)
    bulk_versions(Model.objects.create(name="iris", created_by=rita), 1, uploaded_by=rita)
    app.conf.task_always_eager = False  # the deploy's own first step is not this test's business
    _, rollout, _ = services.deploy("iris", "dev", 1, actor=Actor(user=rita), plan=CANARY)
    app.conf.task_always_eager = True
    pause_index = next(i for i, step in enumerate(rollout.steps) if step["kind"] == "pause")
    # Paused at the plan's pause: the engine's step only looks at the target (nothing runs for it here).
    Rollout.objects.filter(pk=rollout.pk).update(state=RolloutState.PAUSED, step_index=pause_index, weight=20)
    rollout.refresh_from_db()

    acted: dict = {}

    def abort_as_the_step_stores_its_result(execute, sql, params, many, context):
        if (
            not acted
            and sql.startswith('UPDATE "deployments_rollout"')
            and '"lease_owner"' in sql
            and '"next_at"' in sql
        ):
            thread = in_thread(acted, "abort", lambda: services.abort_rollout(rollout, actor=Actor(user=rita)))
            thread.join(timeout=30)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(abort_as_the_step_stores_its_result):
        outcome = engine.advance(rollout.pk, rollout.revision)

    aborted = acted["abort"]
    assert not isinstance(aborted, Exception), aborted
    assert aborted.state == RolloutState.REVERTING
    assert outcome == "superseded"  # the step gave way to the abort
    after = Rollout.objects.get(pk=rollout.pk)
    # The abort's own task was dropped (the step held the rollout); the engine went on from it anyway.
    assert after.revision > aborted.revision, f"nobody took up the abort: still {after.state}"
    assert after.state == RolloutState.ABORTED
    assert after.events.filter(kind="transition", message="reverting → aborted").exists()


def test_a_step_slower_than_the_lease_keeps_it_and_no_second_worker_runs_the_rollout(live_db, settings):
    """A step that takes longer than SLIPWAY_ROLLOUT_LEASE_S (a slow API server, a large pull) still holds the
    rollout: its worker keeps the lease alive, so a second worker (the sweeper's message, a redelivery) finds it
    leased instead of driving the same rollout at the same time."""
    settings.SLIPWAY_ROLLOUT_LEASE_S = 1
    dev = services.create_environment("dev", actor=Actor.system())
    rita = UserFactory(username="rita")
    RoleBinding.objects.create(user=rita, environment=dev, role=Role.DEPLOYER)
    bulk_versions(Model.objects.create(name="iris", created_by=rita), 1, uploaded_by=rita)
    _, rollout, _ = services.deploy("iris", "dev", 1, actor=Actor(user=rita), plan=CANARY)
    pause_index = next(i for i, step in enumerate(rollout.steps) if step["kind"] == "pause")
    Rollout.objects.filter(pk=rollout.pk).update(state=RolloutState.PAUSED, step_index=pause_index, weight=20)
    rollout.refresh_from_db()

    second: dict = {}

    def a_second_worker_comes_while_the_step_is_slow(execute, sql, params, many, context):
        if not second and sql.startswith('UPDATE "deployments_rollout"') and '"next_at"' in sql:
            time.sleep(2.5)  # the step has run for more than twice its lease
            thread = in_thread(second, "advance", lambda: engine.advance(rollout.pk, rollout.revision))
            thread.join(timeout=30)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(a_second_worker_comes_while_the_step_is_slow):
        outcome = engine.advance(rollout.pk, rollout.revision)

    assert second["advance"] == "stale, leased or finished"
    assert outcome == RolloutState.PAUSED  # the slow step's result stands: nobody else's replaced it
    after = Rollout.objects.get(pk=rollout.pk)
    assert after.revision == rollout.revision + 1 and after.lease_owner == "" and after.lease_expires_at is None
