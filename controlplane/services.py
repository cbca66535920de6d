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
