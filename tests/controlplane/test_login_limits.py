"""Log-in attempts are limited per username and per address (django-axes, counted in PostgreSQL).

A lockout answers 429 with when to retry, and each refused try is in the audit log.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from controlplane.models import AuditEvent
from tests.conftest import ROOT
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"  # tests.factories.UserFactory's


@pytest.fixture(autouse=True)
def three_tries_a_minute(settings):
    settings.AXES_FAILURE_LIMIT = 3
    settings.AXES_COOLOFF_TIME = timedelta(seconds=60)


def log_in(username: str, password: str, *, address: str = "192.0.2.10", path: str = "/login/", **headers):
    """A browser's log-in form (url-encoded: an anonymous multipart POST is sent to log in first)."""
    form = urlencode({"username": username, "password": password})
    return Client(REMOTE_ADDR=address, **headers).post(path, form, content_type="application/x-www-form-urlencoded")


def test_a_wrong_password_is_refused_as_before_until_the_limit(alice):
    for _ in range(2):
        response = log_in("alice", "guess")
        assert response.status_code == 200
        assert b"didn't match" in response.content
    assert not AuditEvent.objects.filter(action="login.locked_out").exists()


def test_the_third_failure_locks_the_username_with_when_to_retry_and_an_audit_event(alice):
    log_in("alice", "guess")
    log_in("alice", "guess")
    response = log_in("alice", "guess")
    assert response.status_code == 429
    assert 55 <= int(response["Retry-After"]) <= 60
    page = response.content.decode()
    assert "Too many failed log-in attempts" in page and "Try again in 60 seconds" in page

    # Even the right password is refused now, and no session is opened.
    refused = log_in("alice", PASSWORD)
    assert refused.status_code == 429
    assert "sessionid" not in refused.cookies

    events = AuditEvent.objects.filter(action="login.locked_out").order_by("id")
    assert [e.outcome for e in events] == ["denied", "denied"]
    assert "'alice'" in events[0].message and "192.0.2.10" in events[0].message
    assert events[0].source_ip == "192.0.2.10"
    assert "retry in" in events[1].message


def test_one_username_is_locked_whatever_the_address(alice):
    for n in range(3):
        log_in("alice", "guess", address=f"198.51.100.{n}")
    assert log_in("alice", PASSWORD, address="198.51.100.99").status_code == 429
    UserFactory(username="bob")
    assert log_in("bob", PASSWORD, address="198.51.100.99").status_code == 302, "other accounts are not locked"


def test_one_address_is_locked_whatever_the_username(alice):
    for name in ("root", "admin", "alice"):
        log_in(name, "guess", address="203.0.113.5")
    assert log_in("alice", PASSWORD, address="203.0.113.5").status_code == 429
    assert log_in("alice", PASSWORD, address="203.0.113.6").status_code == 302, "one failure for alice herself"


def test_a_forged_forwarded_for_does_not_dodge_the_address_limit(alice, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}  # behind one trusted proxy
    for n, name in enumerate(("root", "admin", "ops")):
        # The client writes its own X-Forwarded-For; the proxy appends the address it saw.
        log_in(name, "guess", address="10.0.0.2", HTTP_X_FORWARDED_FOR=f"192.0.2.{n}, 203.0.113.7")
    response = log_in("bob", "guess", address="10.0.0.2", HTTP_X_FORWARDED_FOR="192.0.2.99, 203.0.113.7")
    assert response.status_code == 429
    assert log_in("alice", PASSWORD, address="10.0.0.2", HTTP_X_FORWARDED_FOR="203.0.113.8").status_code == 302


def test_the_admin_log_in_is_limited_too(admin):
    for _ in range(3):
        response = log_in("admin", "guess", path="/admin/login/")
    assert response.status_code == 429
    assert log_in("admin", PASSWORD, path="/admin/login/").status_code == 429
    assert AuditEvent.objects.filter(action="login.locked_out", message__contains="/admin/login/").count() == 2


@pytest.mark.slow
def test_the_lock_lifts_after_the_lockout(alice, settings):
    settings.AXES_COOLOFF_TIME = timedelta(seconds=2)
    for _ in range(3):
        response = log_in("alice", "guess")
    assert response.status_code == 429
    assert response["Retry-After"] in ("1", "2")
    time.sleep(2.1)
    assert log_in("alice", PASSWORD).status_code == 302


def test_a_refused_try_during_the_lockout_does_not_extend_it(alice):
    for _ in range(3):
        first = log_in("alice", "guess")
    time.sleep(1.1)
    later = log_in("alice", "guess")
    assert int(later["Retry-After"]) < int(first["Retry-After"])


def test_the_limits_come_from_the_environment_and_a_bad_value_stops_start_up():
    read = "import django; django.setup(); from django.conf import settings as s; print(s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME.total_seconds())"  # noqa: E501
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "controlplane.settings"}
    good = {**env, "SLIPWAY_LOGIN_MAX_ATTEMPTS": "7", "SLIPWAY_LOGIN_LOCKOUT_S": "120"}
    done = subprocess.run([sys.executable, "-c", read], env=good, cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.split() == ["7", "120.0"], done.stderr[-2000:]
    bad = {**env, "SLIPWAY_LOGIN_MAX_ATTEMPTS": "0"}
    done = subprocess.run([sys.executable, "-c", read], env=bad, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0
    assert "SLIPWAY_LOGIN_MAX_ATTEMPTS=0 must be at least 1" in done.stderr


# --- Lifting a lockout from the command line, as the README says, is audited --------------
def test_axes_reset_username_lifts_the_lockout_and_records_who_lifted_what(alice):
    for _ in range(3):
        log_in("alice", "guess")
    assert log_in("alice", PASSWORD).status_code == 429
    out = io.StringIO()
    call_command("axes_reset_username", "alice", stdout=out)
    assert out.getvalue().splitlines() == [
        "1 attempts removed.",  # django-axes' wording: one record, of 3 failures
        "Lockouts lifted: address 192.0.2.10, username 'alice'.",
        "Recorded in the audit log as login.lockout_reset.",
    ]
    assert log_in("alice", PASSWORD).status_code == 302

    event = AuditEvent.objects.get(action="login.lockout_reset")
    assert (event.actor, event.outcome, event.target_type, event.target_id, event.target_repr) == (
        "system",
        "success",
        "user",
        str(alice.pk),
        "alice",
    )
    assert event.after == {
        "username": "alice",
        "ip_address": None,
        "attempts_removed": 1,
        "lockouts_lifted": ["ip_address:192.0.2.10", "username:alice"],
    }
    assert event.message.startswith("python manage.py axes_reset_username alice, run by OS user ")
    assert event.message.endswith(
        ": lifted 2 lockouts (address 192.0.2.10, username 'alice'); removed 1 record of failed log-ins "
        "of username 'alice'"
    )


def test_axes_reset_ip_and_axes_reset_are_audited_too(alice):
    for name in ("root", "admin", "ops"):
        log_in(name, "guess", address="203.0.113.5")
    log_in("bob", "guess", address="203.0.113.6")
    assert log_in("alice", PASSWORD, address="203.0.113.5").status_code == 429
    call_command("axes_reset_ip", "203.0.113.5", stdout=io.StringIO())
    assert log_in("alice", PASSWORD, address="203.0.113.5").status_code == 302
    by_ip = AuditEvent.objects.get(action="login.lockout_reset")
    assert (by_ip.target_type, by_ip.target_repr) == ("ip_address", "203.0.113.5")
    assert by_ip.after["attempts_removed"] == 3 and by_ip.after["lockouts_lifted"] == ["ip_address:203.0.113.5"]

    out = io.StringIO()
    call_command("axes_reset", stdout=out)
    assert out.getvalue().splitlines()[0] == "1 attempts removed."  # bob's one failure, no lockout
    everyone = AuditEvent.objects.filter(action="login.lockout_reset").latest("id")
    assert everyone.target_repr == "every username and address"
    assert everyone.message.endswith(": lifted 0 lockouts; removed 1 record of failed log-ins (all of them)")


def test_an_empty_username_or_a_bad_address_lifts_nothing_and_the_refusal_is_recorded(alice):
    for _ in range(3):
        log_in("alice", "guess")
    # django-axes' own command would read "" as no filter at all, and lift every lockout there is.
    with pytest.raises(CommandError, match="The username is empty"):
        call_command("axes_reset_username", "", stdout=io.StringIO())
    with pytest.raises(CommandError, match=r"'192\.0\.2' is not an IP address: give it as the login\.locked_out"):
        call_command("axes_reset_ip", "192.0.2", stdout=io.StringIO())
    assert log_in("alice", PASSWORD).status_code == 429
    refusals = AuditEvent.objects.filter(action="login.lockout_reset").order_by("id")
    assert [(e.actor, e.outcome) for e in refusals] == [("system", "invalid"), ("system", "invalid")]
