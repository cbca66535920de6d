"""Granting and revoking roles. An environment's admins manage its roles; roles in every
environment are managed by those who hold admin in every environment (and superusers)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction

from controlplane import access
from controlplane.audit import Actor, record
from controlplane.errors import Conflict, InvalidInput, NotFound
from controlplane.models import Role, RoleBinding


def _principal(user: str | None, group: str | None):
    user, group = (user or "").strip(), (group or "").strip()
    if bool(user) == bool(group):
        raise InvalidInput(
            "Name either a user or a group to grant the role to (not both).",
            fields={"user": ["user or group"], "group": ["user or group"]},
        )
    if user:
        found = get_user_model().objects.filter(username=user).first()
        if found is None:
            raise InvalidInput(
                f"There is no user {user!r}: they must sign in once or be created by an admin first.",
                fields={"user": ["unknown"]},
            )
        return {"user": found, "group": None}
    found = Group.objects.filter(name=group).first()
    if found is None:
        raise InvalidInput(
            f"There is no group {group!r}: create it in the admin site (/admin/auth/group/) first.",
            fields={"group": ["unknown"]},
        )
    return {"user": None, "group": found}


def _require_manager(actor: Actor, environment) -> None:
    if environment is None:
        access.require_everywhere(actor, Role.ADMIN, "manage roles in every environment")
    else:
        access.require(actor, Role.ADMIN, environment, "manage who has which role")


def grant_role(
    environment, role: str, *, actor: Actor, user: str | None = None, group: str | None = None
) -> tuple[RoleBinding, bool]:
    """Give a user or group `role` in `environment` (None: every environment). Granting again changes the role.

    Returns the binding and whether it is new (as get_or_create does)."""
    if role not in Role.values:
        raise InvalidInput(f"role must be one of {', '.join(Role.values)}.", fields={"role": ["unknown"]})
    _require_manager(actor, environment)
    principal = _principal(user, group)
    try:
        with transaction.atomic():
            binding = (
                RoleBinding.objects.select_for_update(of=("self",))
                .filter(environment=environment, **principal)
                .select_related("user", "group", "environment")
                .first()
            )
            before = None
            if binding is None:
                binding = RoleBinding.objects.create(
                    environment=environment, role=role, created_by=actor.user, **principal
                )
            elif binding.role != role:
                before = {"role": binding.role}
                RoleBinding.objects.filter(pk=binding.pk).update(role=role)
                binding.role = role
            else:
                return binding, False
            record(
                "role.grant",
                actor=actor,
                target=binding,
                before=before,
                after={"role": role, "principal": binding.principal, "environment": binding.scope_name},
                environment=environment.name if environment else "",
            )
    except IntegrityError:
        raise Conflict("Someone changed this role at the same moment: look again and retry.") from None
    return binding, before is None


def revoke_role(binding: RoleBinding, *, actor: Actor) -> None:
    _require_manager(actor, binding.environment)
    with transaction.atomic():
        locked = RoleBinding.objects.select_for_update(of=("self",)).filter(pk=binding.pk).first()
        if locked is None:
            raise NotFound("This role was revoked already.")
        record(
            "role.revoke",
            actor=actor,
            target=binding,
            before={"role": binding.role, "principal": binding.principal, "environment": binding.scope_name},
            environment=binding.environment.name if binding.environment_id else "",
        )
        locked.delete()


def visible_bindings(actor: Actor):
    """The role bindings the actor may see: those of environments they view; every-environment ones
    only when they view every environment."""
    bindings = RoleBinding.objects.select_related("user", "group", "environment")
    ids = access.environment_ids(actor)
    if ids is None:
        return bindings
    return bindings.filter(environment__in=ids)
