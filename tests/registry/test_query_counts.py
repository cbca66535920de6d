"""List pages and endpoints cost the same number of queries with 10 rows or 1000."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from controlplane.audit import Actor, record
from controlplane.models import AuditEvent
from registry.models import Model
from tests.factories import bulk_versions

pytestmark = pytest.mark.django_db

API_LISTS = [
    "/api/v1/models/",
    "/api/v1/models/?search=model",
    "/api/v1/models/iris/versions/",
    "/api/v1/models/iris/versions/?status=ready",
    "/api/v1/audit/",
    "/api/v1/audit/?action=model.",
]
HTML_LISTS = [
    "/models/",
    "/models/?q=model",
    "/models/iris/",
    "/models/iris/?page=2",
    "/models/iris/versions/rows/",
    "/audit/",
    "/audit/?action=model.",
]


def grow(alice, rows: int) -> None:
    """Bring the registry and the audit log up to `rows` models, versions of iris, and events."""
    iris, _ = Model.objects.get_or_create(name="iris", defaults={"created_by": alice})
    others = Model.objects.exclude(pk=iris.pk).count()
    Model.objects.bulk_create(Model(name=f"model-{n:04}", created_by=alice) for n in range(others, rows))
    bulk_versions(iris, rows - iris.latest_version, uploaded_by=alice)
    actor = Actor(user=alice)
    for n in range(AuditEvent.objects.count(), rows):
        record("model.create", actor=actor, target=("model", n, f"model-{n:04}"))


def queries(client, url: str) -> int:
    client.get(url)  # warm up: the token's last-used stamp, the session
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code in (200, 286), url  # 286: htmx, stop polling
    return len(captured.captured_queries)


@pytest.mark.slow
def test_list_endpoints_and_pages_do_not_query_per_row(api, client, alice):
    client.force_login(alice)
    grow(alice, 10)
    small = {url: queries(api, url) for url in API_LISTS} | {url: queries(client, url) for url in HTML_LISTS}
    grow(alice, 1000)
    large = {url: queries(api, url) for url in API_LISTS} | {url: queries(client, url) for url in HTML_LISTS}
    assert large == small
    assert max(small.values()) <= 8, small
