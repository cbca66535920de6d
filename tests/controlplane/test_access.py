"""Who may call what: every API endpoint and every browser page, for each role, in the caller's own
environment and in another team's.

`API` and `PAGES` below are the access policy written down, one row per URL pattern and method.
`test_every_api_endpoint_has_a_row` and `test_every_page_has_a_row` fail when a URL appears that the
tables do not cover: decide who may use it, then add its row.

The people: nobody signed in; someone signed in with no role; a viewer, deployer, approver and admin
of the environment "own" (bindings there only); an admin of every environment; a superuser. The
objects: the same estate in "own" and in "foreign", where only the last two hold a role. What users
rely on: anonymous API calls get 401 and pages send to the login; another team's things are 404,
never 403 and never data; a lesser role gets 403 naming the role it needs; lists never show
another team's rows.

The estate is built once for the module, inside a transaction rolled back at the end; each test
runs in a savepoint of its own, so a request that changes something changes nothing for the next.
Nothing reaches a worker: what a request enqueues is enqueued on commit, and nothing commits.
"""

from __future__ import annotations

import html
import io
import json
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

import pytest
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from controlplane.audit import Actor
from controlplane.models import APIToken, AuditEvent, Role, RoleBinding
from controlplane.tokens import create_token
from deployments import services
from deployments.models import ApprovalRequest, Deployment, Environment, ImageBuild, Rollout
from registry.models import Model, ModelVersion, artifact_storage
from tests.conftest import bearer_client
from tests.factories import UserFactory, bulk_versions

ANONYMOUS, NOBODY, VIEWER, DEPLOYER, APPROVER, ADMIN, GLOBAL_ADMIN, SUPERUSER = PRINCIPALS = (
    "anonymous",
    "nobody",
    "viewer",
    "deployer",
    "approver",
    "admin",
    "global_admin",
    "superuser",
)
EVERYWHERE = (GLOBAL_ADMIN, SUPERUSER)  # admins of every environment
RANK = {NOBODY: 0, VIEWER: 1, DEPLOYER: 2, APPROVER: 3, ADMIN: 4}  # the role each holds in "own"
OWN, FOREIGN = "own", "foreign"
ENVIRONMENTS = (OWN, FOREIGN, "own-next", "foreign-next")
SCOPE_RANK = {"read": 1, "deploy": 2}  # the role a token of that scope acts as, at most
SIGNATURE = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}


# --- The estate ----------------------------------------------------------------------------------
@dataclass
class Estate:
    """What each environment holds (by environment name), and each person's API token."""

    users: dict = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # principal -> raw token
    spare_tokens: dict[str, int] = field(default_factory=dict)  # principal (and "outsider") -> a token to revoke
    scoped_tokens: dict[str, str] = field(default_factory=dict)  # scope -> the superuser's token of that scope
    clients: dict[tuple[str, str], Client] = field(default_factory=dict)  # ("api"/"page", principal or scope)
    deployments: dict[str, dict[str, int]] = field(default_factory=dict)  # env -> model -> deployment id
    rollouts: dict[str, dict[str, int]] = field(default_factory=dict)  # env -> "paused"/"progressing" -> id
    approvals: dict[str, int] = field(default_factory=dict)  # env -> pending approval request id
    events: dict[str, int] = field(default_factory=dict)  # env -> an audit event about it
    bindings: dict[str, int] = field(default_factory=dict)  # env -> the bystander's role binding
    build: int = 0  # a queued image build of iris v1


def _settle(rollout: Rollout) -> None:
    """End a rollout as the worker would, the release now serving."""
    Rollout.objects.filter(pk=rollout.pk).update(state="succeeded")
    Deployment.objects.filter(pk=rollout.deployment_id).update(current_release=rollout.release_id)


def build_estate() -> Estate:
    system = Actor.system()
    estate = Estate()
    names = [*RANK, GLOBAL_ADMIN, SUPERUSER, "bystander", "outsider", "newcomer", "maker"]
    users = {name: UserFactory(username=name, password=None) for name in names}  # no hashing: fast
    users[SUPERUSER].is_superuser = True
    users[SUPERUSER].save(update_fields=["is_superuser"])
    estate.users = users
    for name in (OWN, FOREIGN):
        services.create_environment(name, actor=system)
        services.create_environment(f"{name}-next", actor=system, promotes_from=name)
    own, foreign = Environment.objects.get(name=OWN), Environment.objects.get(name=FOREIGN)
    for principal in (VIEWER, DEPLOYER, APPROVER, ADMIN):
        RoleBinding.objects.create(user=users[principal], environment=own, role=principal)
    RoleBinding.objects.create(user=users[GLOBAL_ADMIN], environment=None, role=Role.ADMIN)
    RoleBinding.objects.create(user=users["outsider"], environment=foreign, role=Role.ADMIN)
    for env in (own, foreign):
        estate.bindings[env.name] = RoleBinding.objects.create(
            user=users["bystander"], environment=env, role=Role.VIEWER
        ).pk

    for name in ("iris", "bert", "gpt", "t5"):
        bulk_versions(Model.objects.create(name=name, created_by=users["maker"]), 3, uploaded_by=users["maker"])
    iris_v1 = ModelVersion.objects.get(model__name="iris", version=1)
    iris_v1.artifact = artifact_storage().save("iris/matrix.pt", ContentFile(b"weights"))
    iris_v1.save(update_fields=["artifact"])
    estate.build = ImageBuild.objects.create(
        model_version=iris_v1, variant="cpu", base_image="base", runtime_version="r1", image_ref="reg/iris:1"
    ).pk

    for env in (OWN, FOREIGN):
        # iris: release 2 serves, release 1 before it (promote, roll back, unpin, deploy again)
        for version in (1, 2):
            rollout = services.deploy("iris", env, version, actor=system, reason="matrix")[1]
            _settle(rollout)
        bert = services.deploy("bert", env, 1, actor=system)[1]  # a paused rollout
        gpt = services.deploy("gpt", env, 1, actor=system)[1]  # a progressing one
        Rollout.objects.filter(pk=bert.pk).update(state="paused")
        Rollout.objects.filter(pk=gpt.pk).update(state="progressing")
        estate.rollouts[env] = {"paused": bert.pk, "progressing": gpt.pk}
        Environment.objects.filter(name=env).update(required_approvals=1)  # t5 waits for one approval
        t5 = services.deploy("t5", env, 1, actor=system, reason="needs a yes")[1]
        estate.approvals[env] = ApprovalRequest.objects.get(rollout=t5).pk
        estate.deployments[env] = dict(
            Deployment.objects.filter(environment__name=env).values_list("model__name", "pk")
        )
        estate.events[env] = AuditEvent.objects.filter(environment=env).order_by("id").first().pk

    for principal in (*RANK, GLOBAL_ADMIN, SUPERUSER, "outsider"):
        user = users[principal]
        estate.tokens[principal] = create_token(user, "matrix", actor=Actor(user=user)).raw
        estate.spare_tokens[principal] = create_token(user, "spare", actor=Actor(user=user)).token.pk
    for scope in SCOPE_RANK:
        superuser = users[SUPERUSER]
        estate.scoped_tokens[scope] = create_token(superuser, scope, actor=Actor(user=superuser), scope=scope).raw
    return estate


@pytest.fixture(scope="module")
def estate(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock(), transaction.atomic():
        estate = build_estate()
        make_clients(estate)
        yield estate
        transaction.set_rollback(True)


@pytest.fixture(autouse=True)
def _each_test(settings):
    cache.clear()  # the API's rate limits count in the cache: hundreds of calls here are not a flood
    settings.SLIPWAY_REGISTRY = "127.0.0.1:5999"  # a build can be asked for (nothing runs it)


def api_client(estate: Estate, principal: str) -> APIClient:
    return estate.clients[("api", principal)]


def page_client(estate: Estate, principal: str) -> Client:
    return estate.clients[("page", principal)]


def make_clients(estate: Estate) -> None:
    """One API client (with their token) and one browser (signed in) per person, made once.

    The browsers share one handler too (see bearer_client). Signing in writes a session row, so
    it happens inside the module's transaction, before any test.
    """
    page_handler = Client().handler
    for principal in PRINCIPALS:
        page = Client()
        page.handler = page_handler
        if principal != ANONYMOUS:
            page.force_login(estate.users[principal])
        estate.clients[("api", principal)] = bearer_client(estate.tokens.get(principal))
        estate.clients[("page", principal)] = page
    for scope, raw in estate.scoped_tokens.items():
        estate.clients[("api", scope)] = bearer_client(raw)


def torchscript_archive() -> bytes:
    """What the upload checks look at in a TorchScript archive (loading it is the validator's job)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for member in ("m/constants.pkl", "m/data.pkl", "m/code/__torch__.py"):
            archive.writestr(member, b"x")
    return buffer.getvalue()


def upload_body() -> dict:
    return {"artifact": ContentFile(torchscript_archive(), name="m.pt"), "signature": json.dumps(SIGNATURE)}


# --- What each person sees in the lists ----------------------------------------------------------
def visible_environments(principal: str) -> set[str]:
    if principal in EVERYWHERE:
        return set(ENVIRONMENTS)
    return {OWN} if RANK.get(principal, 0) > 0 else set()


def results(response) -> list[dict]:
    return response.json()["results"]


def check_environments(estate, principal, response):
    assert {row["name"] for row in results(response)} == visible_environments(principal)


def check_deployments(estate, principal, response):
    expected = {pk for env in visible_environments(principal) for pk in estate.deployments.get(env, {}).values()}
    assert {row["id"] for row in results(response)} == expected


def check_rollouts(estate, principal, response):
    envs = visible_environments(principal)
    expected = set(Rollout.objects.filter(deployment__environment__name__in=envs).values_list("pk", flat=True))
    assert {row["id"] for row in results(response)} == expected


def check_approvals(estate, principal, response):
    expected = {estate.approvals[env] for env in visible_environments(principal) if env in estate.approvals}
    assert {row["id"] for row in results(response)} == expected


def check_bindings(estate, principal, response):
    envs = {row["environment"] for row in results(response)}
    if principal in EVERYWHERE:
        assert envs == {None, OWN, FOREIGN}
    else:
        assert envs == visible_environments(principal)


def check_tokens(estate, principal, response):
    user = estate.users[principal]
    assert {row["id"] for row in results(response)} == set(
        APIToken.objects.filter(user=user).values_list("pk", flat=True)
    )


def check_audit(estate, principal, response):
    seen = {row["environment"] for row in results(response)}
    assert seen <= visible_environments(principal) | {""}, seen
    client = api_client(estate, principal)
    for env in (FOREIGN, OWN):
        count = client.get(f"/api/v1/audit/?environment={env}").json()["count"]
        assert (count > 0) == (env in visible_environments(principal)), (env, count)


def check_audit_export(estate, principal, response):
    rows = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines() if line]
    assert rows
    assert {row["environment"] for row in rows} <= visible_environments(principal) | {""}


def check_page_hides_foreign(estate, principal, response):
    if principal not in EVERYWHERE:
        assert "foreign" not in response.content.decode()


# --- The policy ----------------------------------------------------------------------------------
# needs:
#   public               anyone, signed in or not
#   signed-in            anyone signed in, whatever their roles
#   mine                 anyone signed in, for their own things (own: theirs; foreign: someone else's -> 404)
#   env:ROLE             ROLE in the object's environment (no role there: 404; a lesser one: 403 naming ROLE)
#   next:deployer        viewer where the deployment is and deployer in the environment it promotes into;
#                        "own" people hold no role in "own-next", so for them nothing promotes from "own"
#                        (409, and "own-next" is never named): test_promoting_needs_deployer_where_it_lands
#   everywhere:admin     admin in every environment (a lesser or partial role: 403 naming admin)
#   registry:ROLE        ROLE in at least one environment (none at all: 403 saying so)
Url = Callable[[Estate, str, str], str]  # (estate, where, principal) -> path


@dataclass(frozen=True)
class Row:
    needs: str
    url: Url
    ok: tuple[int, ...] = (200,)
    body: Callable[[Estate, str], dict] | dict | None = None
    multipart: bool = False
    check: Callable | None = None  # what an allowed caller's answer must (not) contain

    @property
    def wheres(self) -> tuple[str, ...]:
        return (OWN, FOREIGN) if self.needs.split(":")[0] in ("env", "next", "mine") else (OWN,)


def fixed(path: str) -> Url:
    return lambda estate, where, principal: path


def deployment(model: str, suffix: str = "") -> Url:
    return lambda estate, where, principal: f"/api/v1/deployments/{estate.deployments[where][model]}/{suffix}"


def rollout(which: str, suffix: str = "") -> Url:
    return lambda estate, where, principal: f"/api/v1/rollouts/{estate.rollouts[where][which]}/{suffix}"


def approval(suffix: str = "") -> Url:
    return lambda estate, where, principal: f"/api/v1/approvals/{estate.approvals[where]}/{suffix}"


def spare_token(estate: Estate, where: str, principal: str) -> int:
    """The caller's own spare token ("own"), or another person's ("foreign")."""
    if where == FOREIGN or principal == ANONYMOUS:
        return estate.spare_tokens["outsider"]
    return estate.spare_tokens[principal]


API: dict[tuple[str, str], Row] = {
    ("api-root", "GET"): Row("signed-in", fixed("/api/v1/")),
    # The registry, shared by every environment
    ("model-list", "GET"): Row("registry:viewer", fixed("/api/v1/models/")),
    ("model-list", "POST"): Row("registry:deployer", fixed("/api/v1/models/"), (201,), {"name": "fresh"}),
    ("model-detail", "GET"): Row("registry:viewer", fixed("/api/v1/models/iris/")),
    ("model-version-list", "GET"): Row("registry:viewer", fixed("/api/v1/models/iris/versions/")),
    ("model-version-list", "POST"): Row(
        "registry:deployer", fixed("/api/v1/models/iris/versions/"), (201,), lambda e, w: upload_body(), True
    ),
    ("model-version-detail", "GET"): Row("registry:viewer", fixed("/api/v1/models/iris/versions/1/")),
    # Admin of any one environment deletes a version every environment shares (one no deployment uses).
    ("model-version-detail", "DELETE"): Row("registry:admin", fixed("/api/v1/models/iris/versions/3/"), (204,)),
    ("model-version-artifact", "GET"): Row("registry:viewer", fixed("/api/v1/models/iris/versions/1/artifact/")),
    ("version-build-list", "GET"): Row("registry:viewer", fixed("/api/v1/models/iris/versions/1/builds/")),
    ("version-build-list", "POST"): Row(
        "registry:deployer", fixed("/api/v1/models/iris/versions/2/builds/"), (201,), {"variant": "cpu"}
    ),
    ("build-list", "GET"): Row("registry:viewer", fixed("/api/v1/builds/")),
    ("build-detail", "GET"): Row("registry:viewer", lambda e, w, p: f"/api/v1/builds/{e.build}/"),
    ("build-cancel", "POST"): Row("registry:deployer", lambda e, w, p: f"/api/v1/builds/{e.build}/cancel/"),
    # Environments
    ("environment-list", "GET"): Row("signed-in", fixed("/api/v1/environments/"), check=check_environments),
    ("environment-list", "POST"): Row(
        "everywhere:admin", fixed("/api/v1/environments/"), (201,), {"name": "brand-new"}
    ),
    ("environment-detail", "GET"): Row("env:viewer", lambda e, w, p: f"/api/v1/environments/{w}/"),
    ("environment-detail", "PATCH"): Row(
        "env:admin", lambda e, w, p: f"/api/v1/environments/{w}/", body={"description": "changed"}
    ),
    ("environment-serving", "GET"): Row("env:viewer", lambda e, w, p: f"/api/v1/environments/{w}/serving/"),
    # Deployments and rollouts
    ("deployment-list", "GET"): Row("signed-in", fixed("/api/v1/deployments/"), check=check_deployments),
    ("deployment-list", "POST"): Row(
        "env:deployer",
        fixed("/api/v1/deployments/"),
        (200,),  # a new rollout on the existing deployment
        lambda estate, where: {"model": "iris", "environment": where, "version": 3},
    ),
    ("deployment-detail", "GET"): Row("env:viewer", deployment("iris")),
    ("deployment-releases", "GET"): Row("env:viewer", deployment("iris", "releases/")),
    ("deployment-serving", "GET"): Row("env:viewer", deployment("iris", "serving/")),
    ("deployment-promote", "POST"): Row("next:deployer", deployment("iris", "promote/"), (201,), {}),
    ("deployment-rollback", "POST"): Row("env:deployer", deployment("iris", "rollback/"), body={"reason": "bad"}),
    ("deployment-unpin", "POST"): Row("env:deployer", deployment("iris", "unpin/")),
    ("rollout-list", "GET"): Row("signed-in", fixed("/api/v1/rollouts/"), check=check_rollouts),
    ("rollout-detail", "GET"): Row("env:viewer", rollout("paused")),
    ("rollout-pause", "POST"): Row("env:deployer", rollout("progressing", "pause/")),
    ("rollout-resume", "POST"): Row("env:deployer", rollout("paused", "resume/")),
    ("rollout-abort", "POST"): Row("env:deployer", rollout("paused", "abort/"), body={"reason": "stop"}),
    ("rollout-promote", "POST"): Row("env:deployer", rollout("paused", "promote/")),
    # Approvals
    ("approval-list", "GET"): Row("signed-in", fixed("/api/v1/approvals/"), check=check_approvals),
    ("approval-detail", "GET"): Row("env:viewer", approval()),
    ("approval-approve", "POST"): Row("env:approver", approval("approve/"), body={"comment": "fine"}),
    ("approval-reject", "POST"): Row("env:approver", approval("reject/"), body={"comment": "not today"}),
    # The audit log
    ("audit-list", "GET"): Row("signed-in", fixed("/api/v1/audit/?page_size=500"), check=check_audit),
    ("audit-detail", "GET"): Row("env:viewer", lambda e, w, p: f"/api/v1/audit/{e.events[w]}/"),
    ("audit-export", "GET"): Row("signed-in", fixed("/api/v1/audit/export/"), check=check_audit_export),
    # Tokens: each person's own
    ("token-list", "GET"): Row("signed-in", fixed("/api/v1/tokens/"), check=check_tokens),
    ("token-list", "POST"): Row("signed-in", fixed("/api/v1/tokens/"), (201,), {"name": "another"}),
    ("token-revoke", "POST"): Row("mine", lambda e, w, p: f"/api/v1/tokens/{spare_token(e, w, p)}/revoke/"),
    # Roles
    ("role-binding-list", "GET"): Row("signed-in", fixed("/api/v1/role-bindings/"), check=check_bindings),
    ("role-binding-list", "POST"): Row(
        "env:admin",
        fixed("/api/v1/role-bindings/"),
        (201,),
        lambda estate, where: {"environment": where, "user": "newcomer", "role": "viewer"},
    ),
    ("role-binding-detail", "GET"): Row("env:viewer", lambda e, w, p: f"/api/v1/role-bindings/{e.bindings[w]}/"),
    ("role-binding-detail", "DELETE"): Row(
        "env:admin", lambda e, w, p: f"/api/v1/role-bindings/{e.bindings[w]}/", (204,)
    ),
}


def _page_deployment(model: str, suffix: str = "") -> Url:
    return lambda estate, where, principal: f"/deployments/{estate.deployments[where][model]}/{suffix}"


def _page_rollout(verb: str, which: str = "paused") -> Url:
    return lambda estate, where, principal: f"/rollouts/{estate.rollouts[where][which]}/{verb}/"


REDIRECT = (302,)
LIVE = (200, 286)  # the live panels: 286 tells htmx to stop polling

# Browser pages, by route and method. One route may have several cases (the rollout verbs).
PAGES: dict[tuple[str, str], list[Row]] = {
    ("", "GET"): [Row("public", fixed("/"), REDIRECT)],
    ("tokens/", "GET"): [Row("signed-in", fixed("/tokens/"))],
    ("tokens/", "POST"): [Row("signed-in", fixed("/tokens/"), (201,), {"name": "from-the-page", "scope": "read"})],
    ("account/password/", "GET"): [Row("signed-in", fixed("/account/password/"))],
    # An empty form: each signed-in user reaches its checks (400; no guess at a password, so no lockout counts).
    ("account/password/", "POST"): [Row("signed-in", fixed("/account/password/"), (400,))],
    ("tokens/<int:pk>/revoke/", "POST"): [
        Row("mine", lambda e, w, p: f"/tokens/{spare_token(e, w, p)}/revoke/", REDIRECT)
    ],
    ("audit/", "GET"): [Row("signed-in", fixed("/audit/"), check=check_page_hides_foreign)],
    ("audit/verify/", "GET"): [Row("everywhere:viewer", fixed("/audit/verify/"))],  # reads every team's events
    # The registry
    ("models/", "GET"): [Row("registry:viewer", fixed("/models/"))],
    ("models/", "POST"): [Row("registry:deployer", fixed("/models/"), REDIRECT, {"name": "from-page"})],
    ("models/<str:name>/", "GET"): [Row("registry:viewer", fixed("/models/iris/"))],
    ("models/<str:name>/versions/rows/", "GET"): [Row("registry:viewer", fixed("/models/iris/versions/rows/"), LIVE)],
    ("models/<str:name>/versions/upload/", "POST"): [
        Row("registry:deployer", fixed("/models/iris/versions/upload/"), (201,), lambda e, w: upload_body(), True)
    ],
    ("models/<str:name>/versions/<int:version>/", "GET"): [Row("registry:viewer", fixed("/models/iris/versions/1/"))],
    ("models/<str:name>/versions/<int:version>/status/", "GET"): [
        Row("registry:viewer", fixed("/models/iris/versions/1/status/"), LIVE)
    ],
    ("models/<str:name>/versions/<int:version>/download/", "GET"): [
        Row("registry:viewer", fixed("/models/iris/versions/1/download/"))
    ],
    ("models/<str:name>/versions/<int:version>/builds/", "POST"): [
        Row("registry:deployer", fixed("/models/iris/versions/2/builds/"), REDIRECT, {"variant": "cpu"})
    ],
    ("builds/<int:pk>/", "GET"): [Row("registry:viewer", lambda e, w, p: f"/builds/{e.build}/")],
    ("builds/<int:pk>/status/", "GET"): [Row("registry:viewer", lambda e, w, p: f"/builds/{e.build}/status/", LIVE)],
    ("builds/<int:pk>/cancel/", "POST"): [
        Row("registry:deployer", lambda e, w, p: f"/builds/{e.build}/cancel/", REDIRECT)
    ],
    # Environments, deployments, rollouts
    ("environments/", "GET"): [Row("signed-in", fixed("/environments/"), check=check_page_hides_foreign)],
    ("environments/", "POST"): [Row("everywhere:admin", fixed("/environments/"), REDIRECT, {"name": "from-page"})],
    ("environments/<str:name>/", "GET"): [Row("env:viewer", lambda e, w, p: f"/environments/{w}/")],
    ("environments/<str:name>/protection/", "POST"): [
        Row("env:admin", lambda e, w, p: f"/environments/{w}/protection/", REDIRECT, {"required_approvals": "2"})
    ],
    ("environments/<str:name>/roles/", "POST"): [
        Row(
            "env:admin",
            lambda e, w, p: f"/environments/{w}/roles/",
            REDIRECT,
            {"principal": "newcomer", "kind": "user", "role": "viewer"},
        )
    ],
    ("environments/<str:name>/roles/<int:pk>/revoke/", "POST"): [
        Row("env:admin", lambda e, w, p: f"/environments/{w}/roles/{e.bindings[w]}/revoke/", REDIRECT, {})
    ],
    ("models/<str:name>/versions/<int:version>/deploy/", "POST"): [
        Row("env:deployer", fixed("/models/iris/versions/3/deploy/"), REDIRECT, lambda e, w: {"environment": w})
    ],
    ("deployments/", "GET"): [Row("signed-in", fixed("/deployments/"), check=check_page_hides_foreign)],
    ("deployments/<int:pk>/", "GET"): [Row("env:viewer", _page_deployment("iris"))],
    ("deployments/<int:pk>/live/", "GET"): [Row("env:viewer", _page_deployment("bert", "live/"), LIVE)],
    ("deployments/<int:pk>/watch/", "GET"): [Row("env:viewer", _page_deployment("bert", "watch/"))],
    ("deployments/<int:pk>/history/", "GET"): [Row("env:viewer", _page_deployment("iris", "history/"))],
    ("deployments/<int:pk>/promote/", "POST"): [
        Row("next:deployer", _page_deployment("iris", "promote/"), REDIRECT, {})
    ],
    ("deployments/<int:pk>/rollback/", "POST"): [
        Row("env:deployer", _page_deployment("iris", "rollback/"), REDIRECT, {"reason": "bad"})
    ],
    ("deployments/<int:pk>/unpin/", "POST"): [Row("env:deployer", _page_deployment("iris", "unpin/"), REDIRECT, {})],
    ("^rollouts/(?P<pk>[0-9]+)/(?P<verb>pause|resume|abort|promote)/$", "POST"): [
        Row("env:deployer", _page_rollout("pause", "progressing"), REDIRECT, {}),
        Row("env:deployer", _page_rollout("resume"), REDIRECT, {}),
        Row("env:deployer", _page_rollout("abort"), REDIRECT, {}),
        Row("env:deployer", _page_rollout("promote"), REDIRECT, {}),
    ],
}
PAGES.update(
    {
        ("approvals/", "GET"): [Row("signed-in", fixed("/approvals/?state="), check=check_page_hides_foreign)],
        ("approvals/<int:pk>/", "GET"): [Row("env:viewer", lambda e, w, p: f"/approvals/{e.approvals[w]}/")],
        ("^approvals/(?P<pk>[0-9]+)/(?P<decision>approve|reject)/$", "POST"): [
            Row("env:approver", lambda e, w, p: f"/approvals/{e.approvals[w]}/approve/", REDIRECT, {"comment": ""}),
            Row("env:approver", lambda e, w, p: f"/approvals/{e.approvals[w]}/reject/", REDIRECT, {"comment": "no"}),
        ],
    }
)
# Not in PAGES, on purpose: the admin site, the login and logout pages, the health check, the OpenAPI
# schema and its docs (public by design), and the static files.
NOT_PAGES = ("admin/", "login/", "logout/", "healthz", "api/", "static/")


# --- What each person should get -----------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    status: tuple[int, ...]
    role: str | None = None  # the role a 403 must name; "" for "a role in at least one environment"

    def __str__(self) -> str:
        return f"{'/'.join(map(str, self.status))}" + (
            f" naming {self.role or 'a role anywhere'}" if self.role is not None else ""
        )


def expected(row: Row, principal: str, where: str, *, page: bool) -> Outcome:
    ok = Outcome(row.ok)
    if row.needs == "public":
        return ok
    if principal == ANONYMOUS:
        return Outcome((302,) if page else (401,))
    if row.needs == "signed-in":
        return ok
    if row.needs == "mine":
        return ok if where == OWN else Outcome((404,))
    kind, role = row.needs.split(":")
    if principal in EVERYWHERE:
        return ok
    rank = RANK[principal]
    if kind == "everywhere":
        return Outcome((403,), role)
    if kind == "registry":
        if rank == 0:
            return Outcome((403,), "")
        return ok if rank >= RANK[role] else Outcome((403,), role)
    if where == FOREIGN or rank == 0:
        return Outcome((404,))
    if kind == "next":
        return Outcome((409,))
    return ok if rank >= RANK[role] else Outcome((403,), role)


def send(client, method: str, row: Row, estate: Estate, where: str, principal: str, *, page: bool):
    url = row.url(estate, where, principal)
    body = row.body(estate, where) if callable(row.body) else row.body
    kwargs = {}
    if page and body is None and method == "POST":
        body = {}
    if body is not None:
        if row.multipart:
            kwargs["data"] = body
        elif page:  # as a browser sends a form
            kwargs.update(data=urlencode(body), content_type="application/x-www-form-urlencoded")
        else:
            kwargs.update(data=body, format="json")
    return getattr(client, method.lower())(url, **kwargs)


def api_cases():
    for (name, method), row in API.items():
        for where in row.wheres:
            for principal in PRINCIPALS:
                yield pytest.param(name, method, where, principal, id=f"{name}-{method}-{where}-{principal}")


def page_cases():
    for (route, method), rows in PAGES.items():
        for index, row in enumerate(rows):
            for where in row.wheres:
                for principal in PRINCIPALS:
                    label = f"{route or '/'}#{index}" if len(rows) > 1 else route or "/"
                    yield pytest.param(
                        route, method, index, where, principal, id=f"{label}-{method}-{where}-{principal}"
                    )


# --- The tables cover every URL --------------------------------------------------------------
def _walk(patterns, prefix=""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern


def api_endpoints() -> set[tuple[str, str]]:
    found = set()
    for route, pattern in _walk(get_resolver().url_patterns):
        if not route.startswith("api/v1/") or "<format>" in route or "drf_format_suffix" in route:
            continue
        actions = getattr(pattern.callback, "actions", None) or {"get": "root"}
        found |= {(pattern.name, method.upper()) for method in actions if method not in ("head", "options")}
    return found


def page_routes() -> set[str]:
    return {route for route, _ in _walk(get_resolver().url_patterns) if not route.startswith(NOT_PAGES)}


def test_every_api_endpoint_has_a_row():
    endpoints = api_endpoints()
    assert not endpoints - API.keys(), f"decide who may call these, then add them to API: {endpoints - API.keys()}"
    assert not API.keys() - endpoints, f"these rows name no endpoint any more: {API.keys() - endpoints}"


def test_every_page_has_a_row():
    routes = page_routes()
    covered = {route for route, _ in PAGES}
    assert not routes - covered, f"decide who may open these, then add them to PAGES: {routes - covered}"
    assert not covered - routes, f"these rows name no page any more: {covered - routes}"


@pytest.mark.django_db
@pytest.mark.parametrize("route", sorted({route for route, _ in PAGES} - {""}))
def test_pages_refuse_the_methods_their_rows_do_not_list(estate, route):
    """So a page cannot quietly start taking POSTs: its row must say who may send them."""
    listed = {method for r, method in PAGES if r == route}
    row = PAGES[(route, next(iter(listed)))][0]
    client = page_client(estate, SUPERUSER)
    for method in {"GET", "POST"} - listed:
        response = getattr(client, method.lower())(row.url(estate, OWN, SUPERUSER))
        assert response.status_code == 405, (route, method, response.status_code)


# --- The matrix ---------------------------------------------------------------------------------
def assert_api_outcome(response, want: Outcome):
    body = b"" if getattr(response, "streaming", False) else response.content
    assert response.status_code in want.status, f"got {response.status_code}, want {want}: {body[:400]!r}"
    if want.role is None:
        return
    error = response.json()
    assert error["code"] == "permission_denied", error
    needed = "a role in at least one environment" if want.role == "" else f"the {want.role} role"
    assert needed in error["error"], f"the refusal should name {needed!r}: {error['error']}"


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "method", "where", "principal"), list(api_cases()))
def test_api_access(estate, name, method, where, principal):
    row = API[(name, method)]
    want = expected(row, principal, where, page=False)
    response = send(api_client(estate, principal), method, row, estate, where, principal, page=False)
    assert_api_outcome(response, want)
    if response.status_code in (401, 403, 404, 409):
        assert_no_data(response)
        if principal not in EVERYWHERE:
            assert_names_nothing_unasked(response.json()["error"], response)
    elif row.check is not None:
        row.check(estate, principal, response)


def assert_names_nothing_unasked(error: str, response) -> None:
    """A refusal names no environment the caller may not see, unless the caller named it."""
    asked = response.wsgi_request.get_full_path() + response.wsgi_request.body.decode(errors="replace")
    for name in ("foreign", "own-next"):
        assert name not in error or name in asked, error


def page_error(body: bytes) -> str:
    """The refusal a page shows (its error paragraph), for failure messages."""
    found = re.search(r'class="error"[^>]*>(.*?)</', body.decode(errors="replace"), re.S)
    return html.unescape(found.group(1).strip()) if found else body[:200].decode(errors="replace")


def assert_no_data(response):
    """A refusal says what to do, and nothing else: no rows, no object."""
    assert set(response.json()) <= {"error", "code", "fields"}, response.json()


@pytest.mark.django_db
@pytest.mark.parametrize(("route", "method", "index", "where", "principal"), list(page_cases()))
def test_page_access(estate, route, method, index, where, principal):
    row = PAGES[(route, method)][index]
    want = expected(row, principal, where, page=True)
    response = send(page_client(estate, principal), method, row, estate, where, principal, page=True)
    status = response.status_code
    body = b"" if getattr(response, "streaming", False) else response.content
    assert status in want.status, f"got {status}, want {want}: {page_error(body)}"
    if status == 302:
        to_login = response["Location"].startswith("/login/")
        assert to_login == (principal == ANONYMOUS and row.needs != "public"), response["Location"]
    if want.role is not None:
        needed = "a role in at least one environment" if want.role == "" else f"the {want.role} role"
        assert needed in body.decode(), f"the refusal page should name {needed!r}: {page_error(body)}"
    if status in (404, 409) and principal not in EVERYWHERE:
        assert_names_nothing_unasked(page_error(body), response)
    if status in want.status and row.check is not None and status == 200:
        row.check(estate, principal, response)


# --- Token scopes: a superuser's token does at most what its scope allows -------------------------
def scope_cases():
    for (name, method), row in API.items():
        for scope in SCOPE_RANK:
            yield pytest.param(name, method, scope, id=f"{name}-{method}-{scope}")


def needed_rank(row: Row, method: str) -> int:
    """The role a request acts as: reads need viewer; a person's own tokens are managed with admin scope."""
    if method == "GET":
        return RANK[VIEWER]
    if row.needs in ("signed-in", "mine"):
        return RANK[ADMIN]
    return RANK[row.needs.split(":")[1]]


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "method", "scope"), list(scope_cases()))
def test_a_scoped_token_acts_at_most_as_its_scope(estate, name, method, scope):
    row = API[(name, method)]
    response = send(api_client(estate, scope), method, row, estate, OWN, SUPERUSER, page=False)
    if SCOPE_RANK[scope] >= needed_rank(row, method):
        assert response.status_code in row.ok, response.content[:300]
        return
    assert response.status_code == 403, response.content[:300]
    assert f"scope is {scope!r}" in response.json()["error"], response.json()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("role_in_next", "status", "says"),
    [
        (None, 409, "No environment promotes from own"),  # own-next does not exist for them
        (Role.VIEWER, 403, "To promote into own-next you need the deployer role in own-next; you are viewer there"),
        (Role.DEPLOYER, 201, None),
    ],
)
def test_promoting_needs_deployer_where_it_lands_and_only_viewer_where_it_starts(estate, role_in_next, status, says):
    if role_in_next:
        next_env = Environment.objects.get(name="own-next")
        RoleBinding.objects.create(user=estate.users[VIEWER], environment=next_env, role=role_in_next)
    response = api_client(estate, VIEWER).post(f"/api/v1/deployments/{estate.deployments[OWN]['iris']}/promote/")
    assert response.status_code == status, response.json()
    if says:
        assert says in response.json()["error"]
    else:
        assert response.json()["environment"] == "own-next"
