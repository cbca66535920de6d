"""The API answers 429 with Retry-After past its rates: per user, and per address for anonymous calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from rest_framework.test import APIClient

from controlplane.env import cache_from_url, env_rate
from controlplane.models import AuditEvent
from tests.conftest import ROOT

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def low_rates(settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"user": "3/min", "anon": "2/min"}}
    cache.clear()  # the local-memory cache of this process: the counts of earlier tests


def test_a_user_past_the_rate_gets_429_with_retry_after_and_a_json_error(api):
    for _ in range(3):
        assert api.get("/api/v1/models/").status_code == 200
    response = api.get("/api/v1/models/")
    assert response.status_code == 429
    wait = int(response["Retry-After"])
    assert 1 <= wait <= 60
    assert response.json() == {
        "error": f"Too many requests: the API allows 3/min per user; retry in {wait} s.",
        "code": "throttled",
    }


def test_the_rate_counts_per_user_not_per_token_or_client(api, alice, admin):
    for _ in range(3):
        api.get("/api/v1/models/")
    same_user = APIClient()
    same_user.force_authenticate(alice)
    assert same_user.get("/api/v1/audit/").status_code == 429
    other = APIClient()
    other.force_authenticate(admin)
    assert other.get("/api/v1/models/").status_code == 200


def test_anonymous_calls_are_counted_per_address(anonymous_api):
    for _ in range(2):
        assert anonymous_api.get("/api/schema/?format=json").status_code == 200
    response = anonymous_api.get("/api/schema/?format=json")
    assert response.status_code == 429
    assert "2/min per address without an API token" in json.loads(response.content)["error"]
    assert anonymous_api.get("/api/schema/?format=json", REMOTE_ADDR="198.51.100.4").status_code == 200


def test_a_throttled_request_is_not_audited_so_a_flood_writes_nothing(api):
    for _ in range(6):
        api.post("/api/v1/models/", {"name": "iris"}, format="json")
    assert AuditEvent.objects.filter(message__contains="429").count() == 0


def test_browser_pages_are_not_throttled(client, alice):
    client.force_login(alice)
    for _ in range(5):
        assert client.get("/models/").status_code == 200


def test_rates_read_from_the_environment():
    assert env_rate("X_UNSET_RATE", "600/min") == "600/min"
    os.environ["X_TEST_RATE"] = " 20 / Second "
    try:
        assert env_rate("X_TEST_RATE", None) == "20/second"
        os.environ["X_TEST_RATE"] = "off"
        assert env_rate("X_TEST_RATE", "600/min") is None
        for bad in ("600", "0/min", "10/week", "ten/min"):
            os.environ["X_TEST_RATE"] = bad
            with pytest.raises(ImproperlyConfigured, match=r"X_TEST_RATE=.* must be a rate like 600/min"):
                env_rate("X_TEST_RATE", None)
    finally:
        del os.environ["X_TEST_RATE"]


def test_the_cache_comes_from_a_url():
    redis = cache_from_url("X_UNSET_CACHE", "redis://cache.internal:6379/1")
    assert redis["BACKEND"] == "django.core.cache.backends.redis.RedisCache"
    assert redis["LOCATION"] == "redis://cache.internal:6379/1"
    assert cache_from_url("X_UNSET_CACHE", "locmem://")["BACKEND"].endswith("LocMemCache")
    with pytest.raises(ImproperlyConfigured, match="use redis://host:6379/1"):
        cache_from_url("X_UNSET_CACHE", "memcached://cache:11211")


def test_settings_take_the_rates_and_the_shared_cache_from_the_environment():
    read = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.REST_FRAMEWORK['DEFAULT_THROTTLE_RATES'], s.CACHES['default']['LOCATION'])"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "controlplane.settings",
        "SLIPWAY_API_RATE_USER": "100/hour",
        "SLIPWAY_API_RATE_ANON": "off",
        "SLIPWAY_CACHE_URL": "redis://127.0.0.1:6379/9",
    }
    done = subprocess.run([sys.executable, "-c", read], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.strip() == "{'user': '100/hour', 'anon': None} redis://127.0.0.1:6379/9", done.stderr[-2000:]


def test_check_deploy_warns_when_each_process_would_count_on_its_own(settings):
    from controlplane.checks import check_shared_cache

    settings.CACHES = {"default": cache_from_url("X_UNSET_CACHE", "locmem://")}
    assert [w.id for w in check_shared_cache(None)] == ["slipway.W001"]
    settings.CACHES = {"default": cache_from_url("X_UNSET_CACHE", "redis://127.0.0.1:6379/1")}
    assert check_shared_cache(None) == []
