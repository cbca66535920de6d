"""Who may do what, where: a role per environment, capped by the API token's scope.

Roles are ordered (viewer < deployer < approver < admin) and each includes the ones
before it. A user holds the highest role any of their bindings gives them: their own
or a group's, in the environment or in every environment (a binding with no
environment). Superusers are admins everywhere. A request made with an API token acts
with at most the token's scope (read: viewer, deploy: deployer, admin: all the user's
roles) and, when the token names environments, only in those.

Services call `require(...)` before they change anything, so the pages and the API
enforce the same rules; reads narrow their querysets with `scope(...)`. Someone with no
role in an environment is told it does not exist (404), never that it is forbidden:
names of other teams' environments, deployments and audit events do not leak.

The registry (models, versions, builds) is shared by every environment: anyone with a
role somewhere may read it, and a deployer somewhere may upload and build.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Q, QuerySet

from controlplane.audit import Actor
from controlplane.errors import Forbidden, NotFound
from controlplane.models import ROLE_RANK, SCOPE_CAP, APIToken, Outcome, Role, RoleBinding

ADMIN_RANK = ROLE_RANK[Role.ADMIN]
_ROLE_BY_RANK = {rank: role for role, rank in ROLE_RANK.items()}


@dataclass(frozen=True)
class Grants:
    """An actor's roles, read once per request: in every environment, and per environment id."""

    everywhere: int  # rank from bindings without an environment (superuser: admin)
    per_environment: dict[int, int]
    cap: int  # the token's scope; admin without a token
    token_environments: frozenset[int] | None  # None: not limited by the token

    def rank_in(self, environment_id: int) -> int:
        if self.token_environments is not None and environment_id not in self.token_environments:
            return 0
        return min(max(self.everywhere, self.per_environment.get(environment_id, 0)), self.cap)

    def best_rank(self) -> int:
        """The highest rank anywhere, for the registry, which every environment shares."""
        ranks = [self.everywhere]
        ranks += [
            rank
            for env, rank in self.per_environment.items()
            if self.token_environments is None or env in self.token_environments
        ]
        return min(max(ranks), self.cap)

    def environment_ids(self, rank: int) -> set[int] | None:
        """Where the actor holds at least `rank`; None: in every environment."""
        if self.cap < rank:
            return set()
        if self.everywhere >= rank:
            return None if self.token_environments is None else set(self.token_environments)
        ids = {env for env, held in self.per_environment.items() if held >= rank}
        return ids if self.token_environments is None else ids & self.token_environments


NO_GRANTS = Grants(0, {}, 0, None)
SYSTEM_GRANTS = Grants(ADMIN_RANK, {}, ADMIN_RANK, None)


def grants(actor: Actor) -> Grants:
    if actor.grants is None:  # the Actor is frozen; this field is its one cache (compare=False)
        object.__setattr__(actor, "grants", _read_grants(actor))
    return actor.grants


_TOKEN_LIMIT = ""  # marks a token's environment limit among role bindings (no role is empty)


def _read_grants(actor: Actor) -> Grants:
    if actor.is_system:
        return SYSTEM_GRANTS
    user = actor.user
    if user is None or not user.is_active:
        return NO_GRANTS
    token = actor.token
    cap = ROLE_RANK[SCOPE_CAP[token.scope]] if token is not None else ADMIN_RANK
    everywhere, per_environment, limited = 0, {}, set()
    for environment_id, role in _grant_rows(user, token):
        if role == _TOKEN_LIMIT:
            limited.add(environment_id)
            continue
        rank = ROLE_RANK[role]
        if environment_id is None:
            everywhere = max(everywhere, rank)
        else:
            per_environment[environment_id] = max(per_environment.get(environment_id, 0), rank)
    if user.is_superuser:
        everywhere = ADMIN_RANK
    return Grants(everywhere, per_environment, cap, frozenset(limited) or None)


def _grant_rows(user, token: APIToken | None) -> list[tuple[int | None, str]]:
    """(environment id, role) of every binding that applies to the user, directly or through a group,
    and (environment id, _TOKEN_LIMIT) of each environment the token is limited to: one round trip.

    Every request reads this. The SQL is written out: the ORM took ~1 ms to build the union
    each time, more than twice the round trip itself.
    """
    bindings, limits = _grants_sql()
    parts, params = [], []
    if not user.is_superuser:  # superusers need no binding
        parts.append(bindings)
        params += [user.pk, user.pk]
    if token is not None:
        parts.append(limits)
        params.append(token.pk)
    if not parts:
        return []
    with connection.cursor() as cursor:
        cursor.execute(" UNION ALL ".join(parts), params)
        return cursor.fetchall()


@cache
def _grants_sql() -> tuple[str, str]:
    quote = connection.ops.quote_name
    bindings = quote(RoleBinding._meta.db_table)
    memberships = quote(get_user_model().groups.through._meta.db_table)
    token_environments = quote(APIToken.environments.through._meta.db_table)
    # Only table names, from the models and quoted, go into the text; every value is a parameter.
    return (
        f"SELECT environment_id, role FROM {bindings}"  # noqa: S608
        f" WHERE user_id = %s OR group_id IN (SELECT group_id FROM {memberships} WHERE user_id = %s)",
        f"SELECT environment_id, '{_TOKEN_LIMIT}' FROM {token_environments} WHERE apitoken_id = %s",  # noqa: S608
    )


def role_in(actor: Actor, environment) -> Role | None:
    """The actor's role in `environment` (None: none at all)."""
    return _ROLE_BY_RANK.get(grants(actor).rank_in(environment.pk))


def can(actor: Actor, role: Role, environment) -> bool:
    return grants(actor).rank_in(environment.pk) >= ROLE_RANK[role]


def require(actor: Actor, role: Role, environment, doing: str) -> None:
    """Refuse unless the actor holds `role` in `environment`. `doing`: "deploy", "approve rollouts"...

    No role at all: 404, as if the environment did not exist. A lesser role: 403 saying which is needed.
    """
    held = grants(actor).rank_in(environment.pk)
    if held >= ROLE_RANK[role]:
        return
    if held == 0:
        raise NotFound(f"There is no environment {environment.name!r}.", fields={"environment": ["unknown"]})
    raise Forbidden(_refusal(actor, role, doing, f"in {environment.name}", _ROLE_BY_RANK[held]))


def require_everywhere(actor: Actor, role: Role, doing: str) -> None:
    """Refuse unless the actor holds `role` in every environment (creating environments, global roles)."""
    g = grants(actor)
    if g.token_environments is None and min(g.everywhere, g.cap) >= ROLE_RANK[role]:
        return
    if g.cap < ROLE_RANK[role]:  # the token's scope stops it, whatever the user holds: say so
        raise Forbidden(_refusal(actor, role, doing, "in every environment", None))
    raise Forbidden(
        f"To {doing} you need the {role} role in every environment"
        + (" and an API token that is not limited to some environments" if g.token_environments else "")
        + ". Ask a Slipway superuser to grant it."
    )


def can_registry(actor: Actor, role: Role) -> bool:
    return grants(actor).best_rank() >= ROLE_RANK[role]


def require_registry(actor: Actor, role: Role, doing: str) -> None:
    """The registry is shared: viewer anywhere reads it, deployer anywhere uploads and builds."""
    held = grants(actor).best_rank()
    if held >= ROLE_RANK[role]:
        return
    if held == 0 and grants(actor).cap > 0:
        raise Forbidden(
            f"To {doing} you need a role in at least one environment, and you have none yet. "
            "Ask an environment's admin to grant you one (viewer to read, deployer to upload and deploy)."
        )
    raise Forbidden(_refusal(actor, role, doing, "in at least one environment", _ROLE_BY_RANK.get(held)))


def _refusal(actor: Actor, role: Role, doing: str, where: str, held: Role | None) -> str:
    token = actor.token
    if token is not None and ROLE_RANK[SCOPE_CAP[token.scope]] < ROLE_RANK[role]:
        return (
            f"To {doing} you need the {role} role {where}; this API token's scope is {token.scope!r}, "
            f"which acts at most as {SCOPE_CAP[token.scope]}. Use a token with a wider scope."
        )
    return (
        f"To {doing} you need the {role} role {where}; you are {held or 'nothing'} there. "
        f"Ask an admin of the environment to grant you {role}."
    )


def environment_ids(actor: Actor, role: Role = Role.VIEWER) -> set[int] | None:
    """The environments where the actor holds `role`; None: every environment."""
    return grants(actor).environment_ids(ROLE_RANK[role])


def scope(queryset: QuerySet, actor: Actor, field: str = "environment", role: Role = Role.VIEWER) -> QuerySet:
    """`queryset` narrowed to rows whose `field` is an environment where the actor holds `role`."""
    ids = environment_ids(actor, role)
    return queryset if ids is None else queryset.filter(**{f"{field}__in": ids})


def sees_everything(actor: Actor) -> bool:
    """A viewer of every environment (an auditor, an admin): reads the whole audit log."""
    return environment_ids(actor) is None


# The registry's audit events (no environment): every reader of the registry may see them.
REGISTRY_TARGETS = ("model", "model_version", "image_build")


def audit_scope(queryset: QuerySet, actor: Actor) -> QuerySet:
    """Audit events the actor may read: their environments', the registry's, and their own.

    A viewer of every environment (an auditor) reads them all, other people's refused attempts included.
    """
    if sees_everything(actor):
        return queryset
    from deployments.models import Environment

    names = list(Environment.objects.filter(pk__in=environment_ids(actor)).values_list("name", flat=True))
    visible = Q(environment__in=names)
    if actor.user is not None:
        own = Q(actor_user_id=actor.user.pk)
        if grants(actor).token_environments is not None:  # a token limited to some environments reads no other's
            own &= Q(environment="")
        visible |= own
    if grants(actor).best_rank() > 0:  # the registry's events; refused attempts are their actors' (and auditors')
        refused = Q(outcome__in=(Outcome.DENIED, Outcome.INVALID))
        visible |= Q(environment="", target_type__in=REGISTRY_TARGETS) & ~refused
    return queryset.filter(visible)
