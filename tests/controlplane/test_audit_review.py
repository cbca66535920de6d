"""Reviewing the audit log: per environment, by text, changes as diffs, exports, and the chain check on the page."""

from __future__ import annotations

import csv
import datetime
import html
import io
import itertools
import json
import re

import pytest
from django.db import connection
from django.http import StreamingHttpResponse
from django.test.utils import CaptureQueriesContext

from controlplane.audit import Actor, record
from controlplane.audit_export import FIELDS
from controlplane.models import AuditEvent, Role, RoleBinding
from deployments import services
from deployments.models import Deployment, Rollout
from registry.models import Model
from tests.factories import UserFactory, bulk_versions

pytestmark = pytest.mark.django_db


@pytest.fixture
def bob(db):
    """An operator who deploys to staging (an admin of every environment, like alice)."""
    user = UserFactory(username="bob")
    RoleBinding.objects.create(user=user, role=Role.ADMIN)
    return user


@pytest.fixture
def estate(alice, bob):
    """dev and staging, iris deployed to both through the real services; staging's rollout aborted."""
    model = Model.objects.create(name="iris", created_by=alice)
    bulk_versions(model, 1, uploaded_by=alice)
    services.create_environment("dev", actor=Actor(user=alice))
    services.create_environment("staging", actor=Actor(user=bob), promotes_from="dev")
    dev, _, _ = services.deploy("iris", "dev", 1, actor=Actor(user=alice), reason="First light for the Q3 model")
    staging, rollout, _ = services.deploy("iris", "staging", 1, actor=Actor(user=bob), reason="customer pilot")
    services.abort_rollout(rollout, actor=Actor(user=bob), reason="wrong day")
    Deployment.objects.filter(pk=dev.pk).update(pinned=True, pinned_reason="rolled back to release 1: drift")
    services.unpin(dev, actor=Actor(user=alice))
    record("model.create", actor=Actor(user=alice), target=model, after={"name": "iris"})  # about no environment
    return {"dev": dev, "staging": staging}


def actions(response) -> list[tuple[str, str]]:
    assert response.status_code == 200, response.content
    return [(e["action"], e["target"]["text"]) for e in response.json()["results"]]


# --- Filters --------------------------------------------------------------------------------


def test_events_about_an_environment_are_found_by_its_name(api, estate):
    staging_rollout = Rollout.objects.get(deployment__environment__name="staging")
    assert actions(api.get("/api/v1/audit/?environment=staging")) == [
        ("rollout.abort", f"rollout #{staging_rollout.pk} of iris in staging"),
        ("deployment.deploy", "iris in staging"),
        ("deployment.create", "iris in staging"),
        ("environment.create", "staging"),
    ]
    assert [a for a, _ in actions(api.get("/api/v1/audit/?environment=dev"))] == [
        "deployment.unpin",
        "deployment.deploy",
        "deployment.create",
        "environment.create",
    ]
    assert actions(api.get("/api/v1/audit/?environment=prod")) == []


def test_the_api_shows_each_events_environment_and_chain_link(api, estate):
    event = api.get("/api/v1/audit/?environment=dev&action=deployment.unpin").json()["results"][0]
    stored = AuditEvent.objects.get(pk=event["id"])
    assert event["environment"] == "dev"
    assert (event["prev_hash"], event["hash"]) == (stored.prev_hash, stored.hash)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("search=first%20light", ["deployment.deploy"]),  # the reason, case-insensitive
        ("search=in%20staging", ["rollout.abort", "deployment.deploy", "deployment.create"]),  # the target's text
        ("search=bob&action=environment.", ["environment.create"]),  # the actor
        ("search=pilot&environment=dev", []),
    ],
)
def test_search_looks_in_reasons_targets_and_actors(api, estate, query, expected):
    assert [a for a, _ in actions(api.get(f"/api/v1/audit/?{query}"))] == expected


def test_one_event_can_be_asked_for_by_id(api, estate):
    event = AuditEvent.objects.get(action="rollout.abort")
    assert actions(api.get(f"/api/v1/audit/?event={event.pk}")) == [("rollout.abort", event.target_repr)]


def test_the_audit_page_filters_by_environment_and_search(client, alice, estate):
    client.force_login(alice)
    page = client.get("/audit/?environment=staging").content.decode()
    assert "4 events match" in page and "rollout.abort" in page and "deployment.unpin" not in page
    assert 'name="environment" value="staging"' in page
    page = client.get("/audit/?search=Q3").content.decode()
    assert "1 event matches" in page and "First light for the Q3 model" in page and "customer pilot" not in page


# --- Before/after as a diff ------------------------------------------------------------------


def test_the_page_shows_what_changed_key_by_key(client, alice):
    record(
        "test.change",
        actor=Actor(user=alice),
        before={"state": "paused", "settings": {"replicas": 1, "port": 8080}},
        after={"state": "progressing", "settings": {"replicas": 2, "port": 8080}, "weight": 50},
    )
    client.force_login(alice)
    page = client.get("/audit/?action=test.change").content.decode()
    assert '<code class="key">state</code>:' in page
    assert re.search(
        r'<del title="[^"]*">&quot;paused&quot;</del> → <ins title="[^"]*">&quot;progressing&quot;</ins>', page
    )
    assert re.search(
        r'<code class="key">settings.replicas</code>:\s*<del title="1">1</del> → <ins title="2">2</ins>', page
    )
    assert re.search(r'\+ <code class="key">weight</code>:\s*<ins title="50">50</ins>', page)
    assert "settings.port" not in page  # unchanged keys are left out
    assert "3 changes" in page


# --- Export -----------------------------------------------------------------------------------


def export(client, query: str):
    response = client.get(f"/api/v1/audit/export/?{query}")
    assert response.status_code == 200, response.content
    assert isinstance(response, StreamingHttpResponse)
    return response, b"".join(response.streaming_content).decode()


def as_event(row: dict) -> AuditEvent:
    """An unsaved event from an exported row, to recompute its hash from the file alone."""
    fields = {name: row[name] for name in FIELDS if name != "id"}
    fields["occurred_at"] = datetime.datetime.fromisoformat(row["occurred_at"])
    return AuditEvent(**fields)


def test_the_jsonl_export_has_every_field_and_each_row_reverifies(api, estate):
    response, body = export(api, "format=jsonl")
    assert response["Content-Type"] == "application/jsonl; charset=utf-8"
    assert re.fullmatch(r'attachment; filename="slipway-audit-\d{8}T\d{6}Z\.jsonl"', response["Content-Disposition"])
    rows = [json.loads(line) for line in body.splitlines()]
    assert body.endswith("\n") and len(rows) == AuditEvent.objects.count() - 1  # all but the export's own event
    assert all(tuple(row) == FIELDS for row in rows)
    assert [row["id"] for row in rows] == sorted(row["id"] for row in rows)  # oldest first: the chain's order
    for previous, row in itertools.pairwise(rows):
        assert row["prev_hash"] == previous["hash"]
    for row in rows:
        assert as_event(row).compute_hash() == row["hash"]


def test_the_csv_export_applies_the_filters(api, estate):
    response, body = export(api, "format=csv&environment=staging&action=deployment.")
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].endswith('.csv"')
    reader = csv.DictReader(io.StringIO(body))
    assert tuple(reader.fieldnames) == FIELDS
    rows = list(reader)
    assert [(r["action"], r["environment"]) for r in rows] == [
        ("deployment.create", "staging"),
        ("deployment.deploy", "staging"),
    ]
    created, deployed = rows
    assert created["before"] == "" and json.loads(created["after"]) == {"key": "iris-staging"}
    assert json.loads(deployed["after"])["version"] == 1 and deployed["message"] == "customer pilot"
    stored = AuditEvent.objects.get(pk=deployed["id"])
    assert (deployed["hash"], deployed["prev_hash"], deployed["actor"]) == (stored.hash, stored.prev_hash, "bob")


def test_an_export_is_audited_with_its_filter(api, estate):
    export(api, "format=csv&environment=dev&search=light&page=3")
    exported = AuditEvent.objects.order_by("-id").first()
    assert (exported.action, exported.actor, exported.outcome) == ("audit.export", "alice (token: laptop)", "success")
    assert exported.after == {"format": "csv", "filter": {"environment": "dev", "search": "light"}}
    _, body = export(api, "action=audit.export")  # jsonl by default; the earlier export is in it, this one not
    assert [json.loads(line)["id"] for line in body.splitlines()] == [exported.id]


def test_a_head_request_for_an_export_builds_and_records_nothing(api, estate):
    before = AuditEvent.objects.count()
    response = api.head("/api/v1/audit/export/?format=csv")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    assert AuditEvent.objects.count() == before


def test_an_export_needs_a_known_format_and_valid_filters(api, estate):
    before = AuditEvent.objects.count()
    response = api.get("/api/v1/audit/export/?format=xlsx")
    assert response.status_code == 400 and response["Content-Type"] == "application/json"
    assert response.json()["error"] == "format must be one of jsonl, csv, not 'xlsx'."
    response = api.get("/api/v1/audit/export/?format=csv&since=yesterday")
    assert response.status_code == 400 and "since" in response.json()["error"]
    assert AuditEvent.objects.count() == before  # nothing was exported, so nothing recorded
    assert api.__class__().get("/api/v1/audit/export/").status_code == 401


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_the_exports_query_count_does_not_grow_with_the_log(api, alice, fmt):
    def queries_for_export() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as queries:
            _, body = export(api, f"format={fmt}")
        return len(queries), body.count("\n")

    for i in range(3):
        record("test.event", actor=Actor(user=alice), target=("thing", i, f"thing {i}"), after={"i": i})
    api.get("/api/v1/audit/")  # the token's first use notes when it was used: not the export's doing
    small, small_lines = queries_for_export()
    AuditEvent.objects.bulk_create(
        AuditEvent(actor="alice", action="test.bulk", after={"i": i}, prev_hash="0" * 64, hash=f"{i:064x}")
        for i in range(2500)
    )
    large, large_lines = queries_for_export()
    assert large_lines - small_lines == 2501  # the bulk rows and the first export's own event
    assert large == small


def test_the_page_links_to_exports_of_its_current_filter(client, alice, estate):
    client.force_login(alice)
    page = client.get("/audit/?environment=staging&search=iris&page=1").content.decode()
    links = [html.unescape(href) for href in re.findall(r'href="(/api/v1/audit/export[^"]*)"', page)]
    assert links == [
        "/api/v1/audit/export?format=jsonl&environment=staging&search=iris",
        "/api/v1/audit/export?format=csv&environment=staging&search=iris",
    ]
    response = client.get(links[1])  # the browser's session is enough
    assert response.status_code == 200 and response.streaming
    body = b"".join(response.streaming_content).decode()
    assert [row["action"] for row in csv.DictReader(io.StringIO(body))] == [
        "deployment.create",
        "deployment.deploy",
        "rollout.abort",
    ]


# --- The chain check on the page ----------------------------------------------------------------


def test_the_page_checks_the_chain_only_when_asked(client, alice, estate):
    client.force_login(alice)
    page = client.get("/audit/").content.decode()
    assert 'hx-get="/audit/verify/"' in page and "Chain intact" not in page
    panel = client.get("/audit/verify/", HTTP_HX_REQUEST="true").content.decode()
    last = AuditEvent.objects.order_by("-id").first()
    assert f"{AuditEvent.objects.count()} events checked" in panel
    assert f'head <code class="anchor">{last.id}:{last.hash}</code>' in panel and "Chain intact" in panel


def test_the_chain_check_names_the_tampered_event_and_links_to_it(client, alice, estate):
    tampered = AuditEvent.objects.get(action="rollout.abort")
    intact_before = AuditEvent.objects.filter(id__lt=tampered.id).count()
    with connection.cursor() as cursor:  # tampering needs the table owner to lift the trigger first
        cursor.execute("ALTER TABLE controlplane_auditevent DISABLE TRIGGER audit_no_update_delete")
        cursor.execute("UPDATE controlplane_auditevent SET message = 'nothing to see' WHERE id = %s", [tampered.id])
        cursor.execute("ALTER TABLE controlplane_auditevent ENABLE TRIGGER audit_no_update_delete")
    client.force_login(alice)
    panel = client.get("/audit/verify/", HTTP_HX_REQUEST="true").content.decode()
    assert f"Chain broken at event #{tampered.id}" in panel
    assert f"The {intact_before} events before it check out" in panel
    link = re.search(r'href="([^"]+)">Show event', panel).group(1)
    assert link == f"/audit/?event={tampered.id}"
    page = client.get(link).content.decode()
    assert "1 event matches" in page and f'id="event-{tampered.id}"' in page and "nothing to see" in page


def test_the_chain_check_needs_a_login(client):
    assert client.get("/audit/verify/").status_code == 302


def test_an_unknown_format_on_a_list_says_so_and_where_files_come_from(api, estate):
    response = api.get("/api/v1/audit/?format=csv")
    assert response.status_code == 404
    error = response.json()["error"]
    assert "There is no format 'csv' here" in error and "/api/v1/audit/export/?format=csv" in error
    response = api.get("/api/v1/models/?format=xml")
    assert response.status_code == 404 and "There is no format 'xml' here" in response.json()["error"]
    assert api.get("/api/v1/models/?format=json").status_code == 200
