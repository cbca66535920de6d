"""Reading an actor's roles: every request does it, so it is one query, whatever the actor holds.

nina is a deployer in dev herself and, through her group, an approver in prod and a viewer
everywhere; a token of hers may be limited to some environments and capped by its scope.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from controlplane import access
from controlplane.audit import Actor
from controlplane.models import Role, RoleBinding
from controlplane.tokens import create_token
from deployments import services
from deployments.models import Environment
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def envs(db):
    system = Actor.system()
    return {name: services.create_environment(name, actor=system) for name in ("dev", "prod", "lab")}


@pytest.fixture
def nina(envs):
    nina = UserFactory(username="nina", password=None)
    team = Group.objects.create(name="ml-team")
    nina.groups.add(team)
    RoleBinding.objects.create(user=nina, environment=envs["dev"], role=Role.DEPLOYER)
    RoleBinding.objects.create(group=team, environment=envs["prod"], role=Role.APPROVER)
    RoleBinding.objects.create(group=team, environment=None, role=Role.VIEWER)
    RoleBinding.objects.create(group=Group.objects.create(name="others"), environment=envs["lab"], role=Role.ADMIN)
    return nina


def read(actor: Actor, django_assert_num_queries) -> dict[str, Role | None]:
    environments = [*Environment.objects.all(), Environment(pk=0, name="somewhere")]  # one made later
    with django_assert_num_queries(1):
        access.grants(actor)
    with django_assert_num_queries(0):  # then kept for the rest of the request
        return {env.name: access.role_in(actor, env) for env in environments}


def test_own_and_group_roles_in_one_query(nina, django_assert_num_queries):
    roles = read(Actor(user=nina), django_assert_num_queries)
    assert roles == {"dev": Role.DEPLOYER, "prod": Role.APPROVER, "lab": Role.VIEWER, "somewhere": Role.VIEWER}


def test_a_limited_token_in_the_same_query(nina, django_assert_num_queries):
    issued = create_token(nina, "ci", actor=Actor(user=nina), scope="admin", environments=["prod", "lab"])
    roles = read(Actor(user=nina, token=issued.token), django_assert_num_queries)
    assert roles == {"dev": None, "prod": Role.APPROVER, "lab": Role.VIEWER, "somewhere": None}


def test_a_scoped_token_caps_every_role(nina, django_assert_num_queries):
    issued = create_token(nina, "reader", actor=Actor(user=nina), scope="read")
    roles = read(Actor(user=nina, token=issued.token), django_assert_num_queries)
    assert roles == {"dev": Role.VIEWER, "prod": Role.VIEWER, "lab": Role.VIEWER, "somewhere": Role.VIEWER}


def test_a_superuser_is_admin_everywhere_but_where_the_token_says(envs, django_assert_num_queries):
    root = UserFactory(username="root", password=None, is_superuser=True)
    with django_assert_num_queries(0):
        assert access.grants(Actor(user=root)).rank_in(envs["lab"].pk) == access.ADMIN_RANK
    issued = create_token(root, "deploy", actor=Actor(user=root), scope="deploy", environments=["dev"])
    roles = read(Actor(user=root, token=issued.token), django_assert_num_queries)
    assert roles == {"dev": Role.DEPLOYER, "prod": None, "lab": None, "somewhere": None}


def test_no_role_at_all(envs, django_assert_num_queries):
    roles = read(Actor(user=UserFactory(username="new", password=None)), django_assert_num_queries)
    assert set(roles.values()) == {None}
