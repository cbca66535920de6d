"""Deleting a version while someone deploys it: one of the two wins, the other gets a refusal that says why.

Before, the deploy's "is the version there and ready" and the delete's "does anything refer to it" were
read without a lock between them, so the loser got a 500 from the foreign key when its transaction
committed. A second connection (a thread) does the delete at the exact moment of the race, picked with
`execute_wrapper` on the deploy's connection: real PostgreSQL, real row locks, nothing patched.
"""

from __future__ import annotations

from django.db import connection

from controlplane.audit import Actor
from controlplane.errors import Conflict, NotFound
from controlplane.models import AuditEvent, Role, RoleBinding
from controlplane.tokens import create_token
from deployments import services
from deployments.models import Deployment, Environment, ImageBuild, Release
from registry import services as registry_services
from registry.models import Model, ModelVersion
from tests.concurrency import in_thread, waiting_for_a_lock
from tests.conftest import wait_for
from tests.factories import UserFactory, bulk_versions


def _people():
    # Protected: a started rollout waits for an approval, so nothing is sent to a worker.
    prod = services.create_environment("prod", actor=Actor.system(), required_approvals=1)
    rita, ada = UserFactory(username="rita"), UserFactory(username="ada")
    RoleBinding.objects.create(user=rita, environment=prod, role=Role.DEPLOYER)
    RoleBinding.objects.create(user=ada, role=Role.ADMIN)
    version = bulk_versions(Model.objects.create(name="iris", created_by=rita), 1, uploaded_by=rita)[0]
    return rita, ada, ModelVersion.objects.select_related("model").get(pk=version.pk)


def _api_as(user, api_client):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user, 'ci', actor=Actor(user=user)).raw}")
    return api_client


def test_a_version_deleted_just_after_the_deploy_read_it_is_refused_with_409_not_500(live_db):
    from rest_framework.test import APIClient

    rita, ada, version = _people()
    api = _api_as(rita, APIClient())
    results: dict = {}

    def delete_right_after_the_version_is_read(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if not results and 'FROM "registry_modelversion"' in sql:
            in_thread(results, "delete", lambda: registry_services.delete_version(version, actor=Actor(user=ada)))
            wait_for(lambda: results, timeout=20, what="the delete to finish")
        return result

    with connection.execute_wrapper(delete_right_after_the_version_is_read):
        response = api.post("/api/v1/deployments/", {"model": "iris", "environment": "prod", "version": 1})
    assert results["delete"] is None  # the delete came first and won
    assert response.status_code == 409, response.content
    assert response.json()["error"] == (
        "iris v1 was deleted while this deploy was being started: deploy another version of iris."
    )
    assert not Release.objects.exists() and not Deployment.objects.exists()
    refusal = AuditEvent.objects.get(action="deployment.deploy")
    assert refusal.outcome == "invalid" and "was deleted while this deploy" in refusal.message
    assert (refusal.actor, refusal.target_type, refusal.target_repr) == ("rita (token: ci)", "model_version", "iris v1")
    assert AuditEvent.objects.filter(action="model_version.delete", outcome="success").count() == 1


def test_a_delete_that_comes_while_a_deploy_is_being_written_waits_and_is_refused(live_db):
    from rest_framework.test import APIClient

    rita, ada, version = _people()
    # The deployment exists already, so the deploy writes no audit event before its release (the audit
    # chain's lock would make the delete wait, and hide the race).
    Deployment.objects.create(
        model=version.model, environment=Environment.objects.get(), key="iris-prod", created_by=rita
    )
    api = _api_as(rita, APIClient())
    results: dict = {}

    def delete_once_the_release_is_written(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if not results and sql.startswith('INSERT INTO "deployments_release"'):
            thread = in_thread(
                results, "delete", lambda: registry_services.delete_version(version, actor=Actor(user=ada))
            )
            results["thread"] = thread
            # Either it finishes (nothing stopped it: the bug) or it waits for the deploy's lock.
            wait_for(
                lambda: "delete" in results or waiting_for_a_lock("transactionid", "tuple"),
                timeout=20,
                what="the delete to finish or wait",
            )
        return result

    with connection.execute_wrapper(delete_once_the_release_is_written):
        response = api.post("/api/v1/deployments/", {"model": "iris", "environment": "prod", "version": 1})
    results["thread"].join(timeout=30)
    assert response.status_code == 200, response.content
    assert isinstance(results["delete"], Conflict), results["delete"]
    assert "iris v1 cannot be deleted: release 1 of " in results["delete"].message
    assert ModelVersion.objects.filter(pk=version.pk).exists()
    assert Release.objects.get().model_version_id == version.pk


def test_a_build_asked_for_a_version_deleted_meanwhile_is_refused(live_db):
    rita, ada, version = _people()
    stale = ModelVersion.objects.select_related("model").get(pk=version.pk)  # read before the delete
    registry_services.delete_version(version, actor=Actor(user=ada))
    try:
        services.request_build(stale, actor=Actor(user=rita))
    except Conflict as exc:
        assert exc.message == (
            "iris v1 was deleted while this build was being requested: build another version of iris."
        )
    else:
        raise AssertionError("the build was not refused")
    assert not ImageBuild.objects.exists()


def test_two_deletes_of_the_same_version_at_once_give_the_second_a_404(live_db):
    _, ada, version = _people()
    stale = ModelVersion.objects.select_related("model").get(pk=version.pk)
    registry_services.delete_version(version, actor=Actor(user=ada))
    try:
        registry_services.delete_version(stale, actor=Actor(user=ada))
    except NotFound as exc:
        assert exc.message == "iris v1 was deleted already (by someone else, a moment ago)."
    else:
        raise AssertionError("the second delete was not refused")
    assert AuditEvent.objects.filter(action="model_version.delete", outcome="success").count() == 1
