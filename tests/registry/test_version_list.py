"""The versions list writes its rows by hand, in the API (registry.serializers.version_list_rows)
and on the model's page (registry.views.version_rows_html): byte for byte what the serializer
and the template they replaced wrote for the same versions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.template import Context, Template, engines
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from controlplane.renderers import JSONRenderer  # the API's own: these tests compare rows, not renderers
from registry.api import uploader_name
from registry.models import Model, ModelVersion
from registry.serializers import ModelVersionSerializer
from registry.views import status_badge_html
from tests.factories import UserFactory, bulk_versions

pytestmark = pytest.mark.django_db


@pytest.fixture
def iris(alice):
    """Versions unlike each other in every way the list shows."""
    model = Model.objects.create(name="iris-2", created_by=alice)
    bob = UserFactory(username="bób")
    model.latest_version = 1230  # four-digit numbers, as a long-lived model has
    bulk_versions(model, 5, uploaded_by=alice, status="pending")
    bulk_versions(model, 1, uploaded_by=bob)
    stamp = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # no microseconds: isoformat drops them
    rows = {v.version - 1230: v for v in model.versions.all()}
    rows[1].created_at = stamp
    rows[2].__dict__.update(
        status="ready",
        signature={"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}], "outputs": []},
        metadata={"git_commit": "abc123", "metrics": {"accuracy": 0.925, "loss": 1e-7}, "tags": ["a", None, True]},
        parameter_count=2**40,
        load_time_ms=12.0,  # a float with no fraction stays 12.0
        created_at=stamp + timedelta(microseconds=7),
        validated_at=stamp + timedelta(hours=1, microseconds=123456),
    )
    rows[3].__dict__.update(
        status="rejected",
        rejection_reason='Pickled objects are refused: export with torch.jit.save. "quoted" <b>',
        validated_at=stamp,
        filename="modèle ünïcode 模型.pt",
        format="torch_export",
        size=3 * 1024**3 + 5,
    )
    rows[5].__dict__.update(
        status="rejected", rejection_reason="x" * 300 + " & <script>", uploaded_by_id=bob.pk, sha256="<&>\"'" * 12
    )
    rows[4].__dict__.update(status="validating", load_time_ms=0.1 + 0.2, parameter_count=0)
    for row in rows.values():
        row.save()
    return model


def serializer_page(response, model: Model) -> bytes:
    """What the list answered before it wrote rows by hand: the same page, through the serializer."""
    request = response.wsgi_request
    versions = model.versions.select_related("uploaded_by").order_by("-version")
    body = response.json()
    assert body["count"] == versions.count()
    page = {
        "count": body["count"],
        "next": body["next"],
        "previous": body["previous"],
        "results": ModelVersionSerializer(versions[:50], many=True, context={"request": request}).data,
    }
    return JSONRenderer().render(page)


def test_the_list_is_byte_for_byte_the_serializers(api, iris):
    response = api.get("/api/v1/models/iris-2/versions/")
    assert response.status_code == 200
    assert response.content == serializer_page(response, iris)
    results = response.json()["results"]
    # The cases above are really there (an equal comparison of two empty pages would prove nothing).
    assert [r["version"] for r in results] == [1236, 1235, 1234, 1233, 1232, 1231]
    assert results[0]["uploaded_by"] == "bób" and results[1]["validated_at"] is None
    assert results[4]["created_at"] == "2026-03-29T00:30:00.000007Z"
    assert results[4]["load_time_ms"] == 12.0 and b'"load_time_ms":12.0' in response.content
    assert results[5]["created_at"] == "2026-03-29T00:30:00Z"
    assert results[0]["artifact_url"] == "http://testserver/api/v1/models/iris-2/versions/1236/artifact/"


@override_settings(TIME_ZONE="Europe/Paris")
def test_datetimes_are_written_in_the_current_time_zone_as_the_serializer_does(api, iris):
    # 2026-03-29 is the night Paris moves to summer time: +01:00 before 01:00 UTC, +02:00 after.
    with timezone.override("Europe/Paris"):
        response = api.get("/api/v1/models/iris-2/versions/")
        assert response.content == serializer_page(response, iris)
    results = {r["version"]: r for r in response.json()["results"]}
    assert results[1231]["created_at"] == "2026-03-29T01:30:00+01:00"
    assert results[1232]["validated_at"] == "2026-03-29T03:30:00.123456+02:00"


def test_a_filtered_page_and_a_later_page_match_the_serializer_too(api, iris):
    response = api.get("/api/v1/models/iris-2/versions/?status=rejected")
    assert [r["version"] for r in response.json()["results"]] == [1235, 1233]
    expected = ModelVersion.objects.filter(model=iris, status="rejected")
    data = ModelVersionSerializer(expected, many=True, context={"request": response.wsgi_request}).data
    assert JSONRenderer().render(response.json()["results"]) == JSONRenderer().render(data)

    response = api.get("/api/v1/models/iris-2/versions/?page=2&page_size=4")
    versions = iris.versions.order_by("-version")[4:]
    data = ModelVersionSerializer(versions, many=True, context={"request": response.wsgi_request}).data
    assert response.json()["count"] == 6 and response.json()["previous"] is not None
    assert JSONRenderer().render(response.json()["results"]) == JSONRenderer().render(data)


# The versions table as its template wrote it before the rows moved to Python (and the
# view's context for it): the reference the page must still equal.
TABLE_BEFORE = """<div id="versions"
     hx-get="{% url 'registry:version-rows' model.name %}{% if page.number > 1 %}?page={{ page.number }}{% endif %}"
     hx-trigger="{% if in_flight %}every 1s, {% endif %}versions-changed from:body" hx-sync="this:drop"
     hx-swap="outerHTML">
<div class="overflow-auto">
<table class="versions">
  <thead><tr><th>Version</th><th>Status</th><th>Format</th><th class="num">Size</th><th>SHA-256</th><th>Uploaded</th></tr></thead>
  <tbody>
  {% for version in page %}
    <tr>
      <td><a href="{{ versions_url }}{{ version.version }}/"><strong>v{{ version.version }}</strong></a></td>
      <td class="status">{% include "registry/htmx/status_badge.html" %}
        {% if version.rejection_reason %}<small class="reason error">{{ version.rejection_reason|truncatechars:180 }}</small>{% endif %}</td>
      <td class="nowrap">{{ version.get_format_display }}</td>
      <td class="num nowrap">{{ version.size|filesizeformat }}</td>
      <td><code title="{{ version.sha256 }}">{{ version.sha256|slice:":12" }}…</code></td>
      <td><span class="nowrap" title="{{ version.created_iso }}">{{ version.created_label }}</span> <span class="muted nowrap">by {{ version.uploaded_by_username }}</span></td>
    </tr>
  {% empty %}
    <tr><td colspan="6" class="empty">No versions yet: upload one above.</td></tr>
  {% endfor %}
  </tbody>
</table>
</div>
{% include "pagination.html" %}
</div>
"""  # noqa: E501


def table_before(request, model: Model, page_number: int = 1, per_page: int = 50) -> str:
    from controlplane.web import paginate

    versions = model.versions.annotate(uploaded_by_username=uploader_name()).order_by("-version")
    page = paginate(request, versions, per_page)
    zone = timezone.get_current_timezone()
    for version in page:
        created = version.created_at.astimezone(zone)
        version.created_iso = created.isoformat()
        version.created_label = created.strftime("%Y-%m-%d %H:%M")
    context = {
        "model": model,
        "page": page,
        "in_flight": any(not v.is_terminal for v in page),
        "versions_url": reverse("registry:version-detail", args=[model.name, 0]).removesuffix("0/"),
    }
    return engines["django"].from_string(TABLE_BEFORE).render(context, request)


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris"])
def test_the_versions_table_is_byte_for_byte_the_templates(client, alice, iris, zone):
    client.force_login(alice)
    with timezone.override(zone):
        response = client.get("/models/iris-2/versions/rows/")
        expected = table_before(response.wsgi_request, iris)
    assert response.content.decode() == expected
    html = response.content.decode()
    # The cases above are really there.
    assert html.count("<tr>") == 7 and ">v1236</strong>" in html and "by bób" in html
    assert 'data-status="validating"' in html and 'class="spinner"' in html and 'class="dot"' in html
    assert '&amp; &lt;script&gt;">rejected</span>' in html  # the whole reason in the badge's title, escaped
    assert "x" * 179 + "…</small>" in html and "&lt;&amp;&gt;&quot;&#x27;" in html
    assert "3.0\xa0GB" in html and "torch.export (.pt2)" in html


def test_a_later_page_and_an_empty_table_match_the_template_too(client, alice, iris):
    client.force_login(alice)
    empty = Model.objects.create(name="empty", created_by=alice)
    response = client.get("/models/empty/versions/rows/")
    assert response.content.decode() == table_before(response.wsgi_request, empty)
    assert "No versions yet" in response.content.decode()

    bulk_versions(iris, 60, uploaded_by=alice)
    response = client.get("/models/iris-2/?page=2")
    table = table_before(response.wsgi_request, iris)
    assert "Page 2 of 2" in table and table.count("<tr>") == 17
    assert table in response.content.decode()


@pytest.mark.parametrize("status", ["pending", "validating", "ready", "rejected"])
@pytest.mark.parametrize("reason", ["", 'no "good" <reason> & more'])
def test_the_rows_status_badge_is_the_badge_templates(status, reason):
    version = ModelVersion(status=status, rejection_reason=reason)
    badge = Template('{% include "registry/htmx/status_badge.html" %}').render(Context({"version": version}))
    assert badge == status_badge_html(status, reason) + "\n"
