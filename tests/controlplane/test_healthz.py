"""`/healthz` answers probes as Kubernetes and load balancers send them: by address, over plain HTTP."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def production_hosts(settings):
    settings.ALLOWED_HOSTS = ["slipway.example.com"]


def test_a_probe_by_pod_address_is_answered_where_other_hosts_are_refused(client, production_hosts):
    # The kubelet's httpGet probe sends `Host: <pod IP>:<port>`.
    response = client.get("/healthz", HTTP_HOST="10.1.2.3:8000")
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert client.get("/login/", HTTP_HOST="10.1.2.3:8000").status_code == 400
    assert client.get("/healthz", HTTP_HOST="slipway.example.com").status_code == 200


def test_a_plain_http_probe_is_not_redirected_under_https(client, production_hosts, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/healthz", HTTP_HOST="10.1.2.3:8000").status_code == 200
    assert client.get("/login/", HTTP_HOST="slipway.example.com").status_code == 301


def test_only_healthz_itself_skips_the_host_check(client, production_hosts):
    for path in ("/healthz/", "/healthzx", "/api/v1/models/"):
        assert client.get(path, HTTP_HOST="10.1.2.3:8000").status_code == 400, path
