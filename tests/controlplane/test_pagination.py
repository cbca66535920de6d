"""Every list is paginated: count, next and previous links, a page size the client may choose."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from controlplane.audit import Actor, record
from registry.models import Model
from tests.factories import bulk_versions

pytestmark = pytest.mark.django_db


def query(url: str | None) -> dict[str, list[str]] | None:
    return None if url is None else parse_qs(urlsplit(url).query)


def walk(api, url: str) -> list[dict]:
    """Every page of a list, following `next` until it runs out."""
    pages = []
    while url:
        response = api.get(url)
        assert response.status_code == 200, response.json()
        pages.append(response.json())
        url = pages[-1]["next"]
    return pages


@pytest.fixture
def iris(alice):
    return Model.objects.create(name="iris", created_by=alice)


def test_the_models_list_pages_with_a_chosen_page_size(api, alice):
    Model.objects.bulk_create(Model(name=f"model-{n:02}", created_by=alice) for n in range(7))
    pages = walk(api, "/api/v1/models/?page_size=3")
    assert [len(p["results"]) for p in pages] == [3, 3, 1]
    assert {p["count"] for p in pages} == {7}
    assert [m["name"] for p in pages for m in p["results"]] == [f"model-{n:02}" for n in range(7)]
    assert pages[0]["previous"] is None and pages[-1]["next"] is None
    assert query(pages[0]["next"]) == {"page": ["2"], "page_size": ["3"]}
    assert query(pages[2]["previous"]) == {"page": ["2"], "page_size": ["3"]}


def test_the_versions_list_pages_newest_first_with_50_by_default(api, alice, iris):
    bulk_versions(iris, 120, uploaded_by=alice)
    pages = walk(api, "/api/v1/models/iris/versions/")
    assert [len(p["results"]) for p in pages] == [50, 50, 20]
    assert pages[0]["count"] == 120
    assert [v["version"] for p in pages for v in p["results"]] == list(range(120, 0, -1))


def test_a_page_size_above_the_maximum_is_capped(api, alice, iris):
    bulk_versions(iris, 600, uploaded_by=alice)
    page = api.get("/api/v1/models/iris/versions/?page_size=10000").json()
    assert len(page["results"]) == 500 and page["count"] == 600


def test_the_next_link_keeps_the_filters(api, alice, iris):
    bulk_versions(iris, 5, uploaded_by=alice, status="ready")
    bulk_versions(iris, 5, uploaded_by=alice, status="rejected")
    first = api.get("/api/v1/models/iris/versions/?status=ready&page_size=2").json()
    assert first["count"] == 5
    assert query(first["next"]) == {"status": ["ready"], "page": ["2"], "page_size": ["2"]}
    pages = walk(api, "/api/v1/models/iris/versions/?status=ready&page_size=2")
    assert [v["version"] for p in pages for v in p["results"]] == [5, 4, 3, 2, 1]


@pytest.mark.parametrize(
    ("page", "why"),
    [("9", "contains no results"), ("0", "less than 1"), ("abc", "not an integer")],
)
def test_a_page_that_does_not_exist_answers_404_in_json_saying_how_pages_go(api, alice, iris, page, why):
    bulk_versions(iris, 3, uploaded_by=alice)
    response = api.get(f"/api/v1/models/iris/versions/?page={page}")
    assert response.status_code == 404
    error = response.json()["error"]
    assert f"There is no page '{page}'" in error and why in error and "Pages are numbered from 1" in error


def test_the_audit_list_pages_newest_first(api, alice):
    actor = Actor(user=alice)
    for n in range(7):
        record("test.event", actor=actor, target=("thing", n, f"thing {n}"))
    pages = walk(api, "/api/v1/audit/?action=test.event&page_size=3")
    assert [len(p["results"]) for p in pages] == [3, 3, 1]
    assert [e["target"]["id"] for p in pages for e in p["results"]] == [str(n) for n in range(6, -1, -1)]
    assert query(pages[0]["next"]) == {"action": ["test.event"], "page": ["2"], "page_size": ["3"]}


def test_the_html_version_table_pages_too(client, alice, iris):
    bulk_versions(iris, 60, uploaded_by=alice)
    client.force_login(alice)
    first = client.get("/models/iris/").content.decode()
    second = client.get("/models/iris/?page=2").content.decode()
    assert ">v60<" in first and ">v11<" in first and ">v10<" not in first
    assert ">v10<" in second and ">v1<" in second and ">v11<" not in second
    assert "Page 1 of 2" in first
