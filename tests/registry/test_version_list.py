"""The versions list writes its rows by hand (registry.serializers.version_list_rows):
byte for byte what ModelVersionSerializer writes for the same versions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings
from django.utils import timezone
from rest_framework.renderers import JSONRenderer

from registry.models import Model, ModelVersion
from registry.serializers import ModelVersionSerializer
from tests.factories import UserFactory, bulk_versions

pytestmark = pytest.mark.django_db


@pytest.fixture
def iris(alice):
    """Versions unlike each other in every way the list shows."""
    model = Model.objects.create(name="iris-2", created_by=alice)
    bob = UserFactory(username="bób")
    bulk_versions(model, 5, uploaded_by=alice, status="pending")
    bulk_versions(model, 1, uploaded_by=bob)
    stamp = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # no microseconds: isoformat drops them
    rows = {v.version: v for v in model.versions.all()}
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
    assert [r["version"] for r in results] == [6, 5, 4, 3, 2, 1]
    assert results[0]["uploaded_by"] == "bób" and results[1]["validated_at"] is None
    assert results[4]["created_at"] == "2026-03-29T00:30:00.000007Z"
    assert results[4]["load_time_ms"] == 12.0 and b'"load_time_ms":12.0' in response.content
    assert results[5]["created_at"] == "2026-03-29T00:30:00Z"
    assert results[0]["artifact_url"] == "http://testserver/api/v1/models/iris-2/versions/6/artifact/"


@override_settings(TIME_ZONE="Europe/Paris")
def test_datetimes_are_written_in_the_current_time_zone_as_the_serializer_does(api, iris):
    # 2026-03-29 is the night Paris moves to summer time: +01:00 before 01:00 UTC, +02:00 after.
    with timezone.override("Europe/Paris"):
        response = api.get("/api/v1/models/iris-2/versions/")
        assert response.content == serializer_page(response, iris)
    results = {r["version"]: r for r in response.json()["results"]}
    assert results[1]["created_at"] == "2026-03-29T01:30:00+01:00"
    assert results[2]["validated_at"] == "2026-03-29T03:30:00.123456+02:00"


def test_a_filtered_page_and_a_later_page_match_the_serializer_too(api, iris):
    response = api.get("/api/v1/models/iris-2/versions/?status=rejected")
    assert [r["version"] for r in response.json()["results"]] == [3]
    expected = ModelVersion.objects.filter(model=iris, status="rejected")
    data = ModelVersionSerializer(expected, many=True, context={"request": response.wsgi_request}).data
    assert JSONRenderer().render(response.json()["results"]) == JSONRenderer().render(data)

    response = api.get("/api/v1/models/iris-2/versions/?page=2&page_size=4")
    versions = iris.versions.order_by("-version")[4:]
    data = ModelVersionSerializer(versions, many=True, context={"request": response.wsgi_request}).data
    assert response.json()["count"] == 6 and response.json()["previous"] is not None
    assert JSONRenderer().render(response.json()["results"]) == JSONRenderer().render(data)
