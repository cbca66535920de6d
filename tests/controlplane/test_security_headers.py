"""What every answer tells the browser: a strict Content Security Policy, and cookies scripts cannot read.

The production settings (SLIPWAY_HTTPS=true) are checked in a separate process, as
gunicorn would load them: Secure cookies, HSTS and the redirect to HTTPS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html import unescape
from urllib.parse import urlencode

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.test import Client

from tests.conftest import ROOT

PASSWORD = "correct horse battery staple"  # tests.factories.UserFactory's

POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "connect-src": "'self'",
    "frame-ancestors": "'none'",
    "form-action": "'self'",
    "base-uri": "'self'",
    "object-src": "'none'",
}


def directives(header: str) -> dict[str, str]:
    parts = (part.strip().split(" ", 1) for part in header.split(";") if part.strip())
    return {name: value for name, value in parts}


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/login/", "/models/", "/api/docs/", "/admin/login/", "/api/v1/models/"])
def test_every_answer_carries_the_strict_policy(client, alice, path):
    client.force_login(alice)
    response = client.get(path)
    assert response.status_code == 200
    assert directives(response["Content-Security-Policy"]) == POLICY
    assert "unsafe" not in response["Content-Security-Policy"]


@pytest.mark.django_db
def test_the_csrf_cookie_is_http_only_and_same_site_lax(client):
    response = client.get("/login/")
    cookie = response.cookies["csrftoken"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert not cookie["secure"], "Secure only behind TLS (SLIPWAY_HTTPS=true), or plain http://127.0.0.1 breaks"


@pytest.mark.django_db
def test_the_session_cookie_is_http_only_and_same_site_lax(alice):
    form = urlencode({"username": "alice", "password": PASSWORD})
    response = Client().post("/login/", form, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 302
    cookie = response.cookies["sessionid"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"


@pytest.mark.django_db
def test_htmx_takes_the_csrf_token_from_the_page_since_scripts_cannot_read_the_cookie(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    page = client.get("/models/").content.decode()
    headers = json.loads(unescape(page.split("hx-headers='", 1)[1].split("'", 1)[0]))
    response = client.post("/models/", {"name": "iris"}, headers={"HX-Request": "true", **headers})
    assert response.status_code in (200, 201, 302), response.content[:300]
    assert client.get("/models/iris/").status_code == 200


PRODUCTION_REQUESTS = """
import json
from urllib.parse import urlencode
import django
django.setup()
from django.test import Client

client = Client(enforce_csrf_checks=True)
plain = client.get("/login/")
login_page = client.get("/login/", secure=True)
token = login_page.cookies["csrftoken"].value
form = urlencode({"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": token})
logged_in = client.post(
    "/login/", form, content_type="application/x-www-form-urlencoded", secure=True,
    headers={"Referer": "https://testserver/login/"},  # Django checks it on HTTPS
)
cookie = lambda response, name: {key: response.cookies[name][key] for key in ("secure", "httponly", "samesite")}
print(json.dumps({
    "plain": [plain.status_code, plain.get("Location")],
    "hsts": login_page.get("Strict-Transport-Security"),
    "login": logged_in.status_code,
    "csrftoken": cookie(login_page, "csrftoken"),
    "sessionid": cookie(logged_in, "sessionid"),
}))
"""


@pytest.mark.slow
def test_behind_tls_cookies_are_secure_hsts_is_sent_and_http_redirects(alice, live_db):
    # The server below runs production settings, which know PBKDF2, not the suite's fast hasher.
    alice.password = PBKDF2PasswordHasher().encode(PASSWORD, PBKDF2PasswordHasher().salt())
    alice.save(update_fields=["password"])
    db = django_settings.DATABASES["default"]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "controlplane.settings",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "SLIPWAY_HTTPS": "true",
        "SLIPWAY_ALLOWED_HOSTS": "testserver",
        "DJANGO_SECRET_KEY": "production-like-test-key-" + "x" * 40,
    }
    code = f"PASSWORD = {PASSWORD!r}\n" + PRODUCTION_REQUESTS
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["plain"] == [301, "https://testserver/login/"]
    assert seen["hsts"] == "max-age=31536000; includeSubDomains"
    assert seen["login"] == 302
    assert seen["csrftoken"] == {"secure": True, "httponly": True, "samesite": "Lax"}
    assert seen["sessionid"] == {"secure": True, "httponly": True, "samesite": "Lax"}
