"""Verbs on users that are not about a single app."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction

from controlplane.audit import Actor, record


def create_superuser(username: str, email: str, password: str | None, *, actor: Actor):
    with transaction.atomic():
        user = get_user_model().objects.create_superuser(username, email, password)
        record("user.create", actor=actor, target=("user", user.pk, username), after={"superuser": True})
    return user


def change_password(user, new_password: str, *, actor: Actor) -> None:
    """Set `user`'s password (already validated) and record it; the event holds no password or hash."""
    with transaction.atomic():
        user.set_password(new_password)
        user.save(update_fields=["password"])
        record("user.password_change", actor=actor, target=("user", user.pk, user.get_username()))
