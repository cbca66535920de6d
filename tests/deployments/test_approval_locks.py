"""An approval and an abort of the same rollout at the same moment: both finish, neither deadlocks.

Aborting locks the rollout, then its approval request, then the audit chain; deciding must take them
in the same order. A third connection holds the audit chain's lock so that each reaches its wait
before the other goes on: real PostgreSQL, real row locks, nothing patched.
"""

from __future__ import annotations

from django.db import connection, transaction

from controlplane.audit import _AUDIT_LOCK_KEY, Actor
from controlplane.errors import ServiceError
from controlplane.models import Role, RoleBinding
from deployments import approvals, services
from deployments.models import ApprovalRequest, Rollout, RolloutState
from registry.models import Model
from tests.concurrency import in_thread, waiting_for_a_lock
from tests.conftest import wait_for
from tests.factories import UserFactory, bulk_versions


def test_an_approval_and_an_abort_at_the_same_moment_do_not_deadlock(live_db):
    prod = services.create_environment("prod", actor=Actor.system(), required_approvals=1)
    rita, amy = UserFactory(username="rita"), UserFactory(username="amy")
    RoleBinding.objects.create(user=rita, environment=prod, role=Role.DEPLOYER)
    RoleBinding.objects.create(user=amy, environment=prod, role=Role.APPROVER)
    bulk_versions(Model.objects.create(name="iris", created_by=rita), 1, uploaded_by=rita)
    _, rollout, _ = services.deploy("iris", "prod", 1, actor=Actor(user=rita))
    request = ApprovalRequest.objects.get(rollout=rollout)

    results: dict = {}
    with transaction.atomic():
        connection.cursor().execute("SELECT pg_advisory_xact_lock(%s)", [_AUDIT_LOCK_KEY])
        approve = in_thread(
            results, "approve", lambda: approvals.decide(request, actor=Actor(user=amy), decision="approve")
        )
        wait_for(lambda: waiting_for_a_lock("advisory"), timeout=10, what="the approval to wait for the audit chain")
        abort = in_thread(results, "abort", lambda: services.abort_rollout(rollout, actor=Actor(user=rita)))
        wait_for(lambda: waiting_for_a_lock("transactionid", "tuple"), timeout=10, what="the abort to wait for a row")
    for thread in (approve, abort):
        thread.join(timeout=30)
        assert not thread.is_alive()

    failed = {name: result for name, result in results.items() if isinstance(result, Exception)}
    assert all(isinstance(exc, ServiceError) for exc in failed.values()), failed  # a refusal at most, no deadlock
    assert Rollout.objects.get(pk=rollout.pk).state in (RolloutState.ABORTED, RolloutState.PENDING)
