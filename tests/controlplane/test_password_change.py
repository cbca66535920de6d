"""Every user changes their own password on /account/password/, audited; the admin's link leads there too.

A user whose account an administrator made has no other way to replace the password they were
given: /admin/password_change/ is for staff only.
"""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from axes.models import AccessAttempt
from django.test import Client

from controlplane.models import AuditEvent
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"  # tests.factories.UserFactory's
NEW = "a new and rather long passphrase"


@pytest.fixture
def browser(alice) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    client.get("/account/password/")  # sets the CSRF cookie
    return client


def change(client: Client, old: str, new1: str, new2: str | None = None):
    return client.post(
        "/account/password/",
        {"old_password": old, "new_password1": new1, "new_password2": new1 if new2 is None else new2},
        HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value,
    )


def logs_in(username: str, password: str) -> bool:
    """Through the log-in form (its failures count towards a lockout, as a person's would)."""
    form = urlencode({"username": username, "password": password})
    response = Client().post("/login/", form, content_type="application/x-www-form-urlencoded")
    assert response.status_code in (200, 302)  # the form again, or on to the models
    return response.status_code == 302


def test_a_user_changes_their_password_stays_logged_in_and_the_change_is_audited(browser, alice):
    other_session = Client()
    other_session.force_login(alice)

    response = change(browser, PASSWORD, NEW)

    assert response.status_code == 200
    assert "Your password is changed" in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    assert logs_in("alice", NEW) and not logs_in("alice", PASSWORD)
    assert browser.get("/models/").status_code == 200  # this session kept
    assert other_session.get("/models/").status_code == 302  # the others logged out
    event = AuditEvent.objects.get(action="user.password_change")
    assert (event.outcome, event.actor, event.target_type, event.target_id) == (
        "success",
        "alice",
        "user",
        str(alice.pk),
    )
    stored = AuditEvent.objects.filter(action="user.password_change").values_list("before", "after", "message")
    assert NEW not in str(list(stored)) and alice.password.split("$")[-1] not in str(list(stored))


@pytest.mark.parametrize(
    ("old", "new1", "new2", "field", "says"),
    [
        ("wrong", NEW, None, "old_password", "Your old password was entered incorrectly"),
        (PASSWORD, NEW, "something else entirely", "new_password2", "match"),
        (PASSWORD, "sh0rt!", None, "new_password2", "too short"),
        (PASSWORD, "password123", None, "new_password2", "too common"),
    ],
)
def test_a_refused_change_says_why_keeps_the_password_and_is_audited(browser, alice, old, new1, new2, field, says):
    response = change(browser, old, new1, new2)

    assert response.status_code == 400
    page = response.content.decode()
    assert says in page
    assert f'id="id_{field}-error"' in page  # the refused field is the one marked
    assert logs_in("alice", PASSWORD)
    event = AuditEvent.objects.get(action="user.password_change")
    assert event.outcome == "invalid" and says in event.message
    assert old not in event.message and new1 not in event.message


def test_the_form_needs_its_csrf_token(browser):
    form = {"old_password": PASSWORD, "new_password1": NEW, "new_password2": NEW}
    response = browser.post("/account/password/", form)
    assert response.status_code == 403
    assert logs_in("alice", PASSWORD)


def test_a_visitor_is_sent_to_log_in_first(db):
    response = Client().get("/account/password/")
    assert response.status_code == 302 and response["Location"].startswith("/login/?next=/account/password/")


def test_every_page_links_to_it_from_the_users_name(browser):
    page = browser.get("/models/").content.decode()
    assert 'href="/account/password/"' in page


def test_the_admin_sites_change_password_link_leads_to_the_audited_page(db):
    staff = UserFactory(username="root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(staff)
    admin_page = client.get("/admin/").content.decode()
    assert 'href="/admin/password_change/"' in admin_page
    response = client.get("/admin/password_change/")
    assert response.status_code == 302 and response["Location"] == "/account/password/"


def test_guessing_the_current_password_counts_towards_the_log_in_lockout(browser, alice, settings):
    """A session left open must not be a way to guess the password without limit: the log-in form locks after 5."""
    for guess in range(settings.AXES_FAILURE_LIMIT - 1):
        assert change(browser, f"guess {guess}", NEW).status_code == 400
    locked = change(browser, "one guess too many", NEW)
    assert locked.status_code == 429 and "Retry-After" in locked
    assert change(browser, PASSWORD, NEW).status_code == 429  # the right one too, until the lockout ends
    log_in = urlencode({"username": "alice", "password": PASSWORD})
    assert Client().post("/login/", log_in, content_type="application/x-www-form-urlencoded").status_code == 429
    alice.refresh_from_db()
    assert alice.check_password(PASSWORD)
    refused = AuditEvent.objects.filter(action="user.password_change").values_list("outcome", flat=True)
    assert list(refused) == ["invalid"] * settings.AXES_FAILURE_LIMIT
    assert AuditEvent.objects.filter(action="login.locked_out").count() == 3  # the last guess, and each try after
    stored = str(list(AccessAttempt.objects.values_list("post_data", flat=True)))
    assert "guess" not in stored and NEW not in stored  # nothing typed in the form is kept
