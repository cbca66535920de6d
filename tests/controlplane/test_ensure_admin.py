"""`make run`'s first administrator: from DJANGO_SUPERUSER_USERNAME and _PASSWORD together, or a generated `admin`.

Half of the pair must not give an administrator nobody can log in as (Django creates a user
without a usable password when none is given), nor quietly fall back to a random password.
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from controlplane.models import AuditEvent

pytestmark = pytest.mark.django_db

PASSWORD = "a long enough first password"


@pytest.fixture(autouse=True)
def no_superuser_variables(monkeypatch):
    for name in ("DJANGO_SUPERUSER_USERNAME", "DJANGO_SUPERUSER_PASSWORD", "DJANGO_SUPERUSER_EMAIL"):
        monkeypatch.delenv(name, raising=False)


def test_a_username_without_a_password_is_refused_saying_what_to_set(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "ops")
    with pytest.raises(CommandError, match="DJANGO_SUPERUSER_PASSWORD is not: set it too"):
        call_command("ensure_admin")
    assert not get_user_model().objects.exists()
    assert not AuditEvent.objects.filter(action="user.create").exists()


def test_a_password_without_a_username_is_refused_instead_of_ignored(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", PASSWORD)
    with pytest.raises(CommandError, match="DJANGO_SUPERUSER_USERNAME is not"):
        call_command("ensure_admin")
    assert not get_user_model().objects.exists()


def test_both_make_an_administrator_who_logs_in_and_later_runs_need_only_the_username(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "ops")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", PASSWORD)
    call_command("ensure_admin")
    user = get_user_model().objects.get(username="ops")
    assert user.is_superuser and user.check_password(PASSWORD)
    monkeypatch.delenv("DJANGO_SUPERUSER_PASSWORD")  # the secret taken away once it was used
    call_command("ensure_admin")
    assert get_user_model().objects.count() == 1
