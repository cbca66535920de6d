import datetime
import hashlib
import json
import os
import sqlite3
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from controlplane.audit import Actor, record, verify_chain
from controlplane.models import AuditEvent
from tests.conftest import ROOT

pytestmark = pytest.mark.django_db


def _events(n: int, actor: Actor) -> list[AuditEvent]:
    return [record("test.event", actor=actor, target=("thing", i, f"thing {i}"), after={"i": i}) for i in range(n)]


def test_events_are_chained_by_hash(alice):
    first, second = _events(2, Actor(user=alice))
    assert second.prev_hash == first.hash
    assert verify_chain() is None


def test_the_database_refuses_update_and_delete_of_audit_rows(alice):
    (event,) = _events(1, Actor(user=alice))
    for statement in (
        "UPDATE controlplane_auditevent SET actor = 'mallory' WHERE id = %s",
        "DELETE FROM controlplane_auditevent WHERE id = %s",
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement, [event.id])
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(actor="mallory")


def test_the_database_refuses_truncate(alice):
    _events(1, Actor(user=alice))
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE controlplane_auditevent ENABLE TRIGGER audit_no_truncate")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("TRUNCATE controlplane_auditevent")


def test_verify_audit_names_the_first_tampered_row(alice, capsys):
    events = _events(4, Actor(user=alice))
    call_command("verify_audit")
    assert "4 events verified" in capsys.readouterr().out
    # Tampering needs the table owner to switch the trigger off first.
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE controlplane_auditevent DISABLE TRIGGER audit_no_update_delete")
        cursor.execute("UPDATE controlplane_auditevent SET after = '{\"i\": 99}' WHERE id = %s", [events[2].id])
        cursor.execute("ALTER TABLE controlplane_auditevent ENABLE TRIGGER audit_no_update_delete")
    with pytest.raises(CommandError, match=f"row {events[2].id}"):
        call_command("verify_audit")


def test_verify_audit_notices_a_deleted_row(alice):
    events = _events(3, Actor(user=alice))
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE controlplane_auditevent DISABLE TRIGGER audit_no_update_delete")
        cursor.execute("DELETE FROM controlplane_auditevent WHERE id = %s", [events[1].id])
        cursor.execute("ALTER TABLE controlplane_auditevent ENABLE TRIGGER audit_no_update_delete")
    broken = verify_chain()
    assert broken is not None and broken.id == events[2].id


def _as_table_owner(*statements: tuple[str, list]) -> None:
    """Tampering needs the table owner to switch the append-only trigger off first."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE controlplane_auditevent DISABLE TRIGGER audit_no_update_delete")
        for sql, params in statements:
            cursor.execute(sql, params)
        cursor.execute("ALTER TABLE controlplane_auditevent ENABLE TRIGGER audit_no_update_delete")


def _head(capsys) -> str:
    call_command("verify_audit")
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("head: ")]
    return line.removeprefix("head: ")


def test_an_anchor_written_down_earlier_shows_the_log_cut_back_past_it(alice, capsys):
    events = _events(5, Actor(user=alice))
    anchor = _head(capsys)
    assert anchor == f"{events[-1].id}:{events[-1].hash}"
    call_command("verify_audit", anchor=anchor)  # nothing changed: holds
    _events(2, Actor(user=alice))
    call_command("verify_audit", anchor=anchor)  # appended to: still holds

    # The last rows removed: what is left still links up, so only the anchor can tell.
    _as_table_owner(("DELETE FROM controlplane_auditevent WHERE id >= %s", [events[3].id]))
    call_command("verify_audit")
    with pytest.raises(CommandError, match=f"event #{events[-1].id}, recorded as an anchor, is gone"):
        call_command("verify_audit", anchor=anchor)


def test_an_anchor_shows_a_log_rewritten_with_fresh_hashes(alice, capsys):
    events = _events(3, Actor(user=alice))
    anchor = _head(capsys)
    # Someone with the table owner's rights changes a row and recomputes every hash from there on.
    first = AuditEvent.objects.get(pk=events[1].pk)
    first.after = {"i": 99}
    rewritten, prev = [], events[0].hash
    for event in [first, *AuditEvent.objects.filter(id__gt=first.id).order_by("id")]:
        event.prev_hash = prev
        event.hash = prev = event.compute_hash()
        rewritten.append(
            (
                "UPDATE controlplane_auditevent SET after = %s, prev_hash = %s, hash = %s WHERE id = %s",
                [json.dumps(event.after), event.prev_hash, event.hash, event.id],
            )
        )
    _as_table_owner(*rewritten)
    call_command("verify_audit")  # the chain alone cannot tell
    with pytest.raises(CommandError, match=f"event #{events[-1].id} no longer has the hash recorded for it"):
        call_command("verify_audit", anchor=anchor)


@pytest.mark.parametrize("anchor", ["12", "12:abc", "x:" + "0" * 64, "12:" + "G" * 64])
def test_an_anchor_that_is_not_one_says_what_to_give(anchor):
    with pytest.raises(CommandError, match="give ID:HASH"):
        call_command("verify_audit", anchor=anchor)


def test_the_hash_covers_the_environment_but_rows_without_one_hash_as_before(alice):
    plain, tagged = (
        record("test.event", actor=Actor(user=alice), after={"i": 1}),
        record("deployment.unpin", actor=Actor(user=alice), after={"pinned": False}, environment="prod"),
    )
    # The scheme from before the field existed, written out: rows recorded then still verify.
    content = {name: getattr(plain, name) for name in AuditEvent.HASHED_FIELDS}
    content["occurred_at"] = plain.occurred_at.astimezone(datetime.UTC).isoformat()
    body = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert plain.hash == hashlib.sha256(f"{plain.prev_hash}\n{body}".encode()).hexdigest()

    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE controlplane_auditevent DISABLE TRIGGER audit_no_update_delete")
        cursor.execute("UPDATE controlplane_auditevent SET environment = 'dev' WHERE id = %s", [tagged.id])
        cursor.execute("ALTER TABLE controlplane_auditevent ENABLE TRIGGER audit_no_update_delete")
    broken = verify_chain()
    assert broken is not None and broken.id == tagged.id


def test_the_embedded_sqlite_database_keeps_its_append_only_triggers_after_every_migration(tmp_path):
    # Some migrations rebuild the table on SQLite, which drops its triggers: the last one must leave them in place.
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | {"SLIPWAY_VAR_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "manage.py", "migrate", "--no-input", "-v0"], env=env, cwd=ROOT, check=True)
    with sqlite3.connect(tmp_path / "slipway.sqlite3") as db:
        triggers = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        assert {"audit_no_update", "audit_no_delete"} <= triggers
        db.execute(
            "INSERT INTO controlplane_auditevent (occurred_at, actor, action, target_type, target_id, target_repr,"
            " environment, outcome, message, request_id, prev_hash, hash)"
            " VALUES ('2026-01-01', 'alice', 'x', '', '', '', '', 'success', '', '', '', 'h')"
        )
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE controlplane_auditevent SET actor = 'mallory'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("DELETE FROM controlplane_auditevent")


def test_numbers_that_postgresql_writes_back_differently_keep_the_chain_intact(alice):
    """jsonb keeps numbers as numeric: 1e16 comes back as 10000000000000000 (an int), -0.0 as 0.0. Hashed as
    sent, such a row failed verification though nobody touched it (a deployer's analysis threshold of
    1e16 ms did it)."""
    sent = {"huge": 1e16, "huger": 1e23, "negative_zero": -0.0, "tiny": 1e-7, "plain": 2.5, "nested": [1.5e300]}
    event = record("test.event", actor=Actor(user=alice), after=sent)
    stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.compute_hash() == stored.hash
    assert verify_chain() is None
    assert stored.after["huger"] == 10**23 and stored.after["tiny"] == 1e-7


@pytest.mark.parametrize(
    "analysis", [{"max_latency_p99_ms": 1e16}, {"max_latency_p99_ms": 1.5e300}, {"max_error_rate": -0.0}]
)
def test_a_float_that_jsonb_gives_back_written_another_way_still_verifies(api, analysis):
    """PostgreSQL keeps JSON numbers as numeric: the float 1e16 comes back as 10000000000000000, -0.0 as 0.0."""
    assert api.post("/api/v1/environments/", {"name": "staging"}, format="json").status_code == 201
    plan = {"strategy": "rolling", "analysis": analysis}
    response = api.patch("/api/v1/environments/staging/", {"default_plan": plan}, format="json")
    assert response.status_code == 200, response.content
    assert AuditEvent.objects.filter(action="environment.update").count() == 1
    assert verify_chain() is None
    call_command("verify_audit")


@pytest.mark.parametrize(
    ("address", "stored"),
    [("2001:DB8:0:0::1", "2001:db8::1"), ("::FFFF:192.0.2.1", "::ffff:192.0.2.1"), ("fe80::1%eth0", "fe80::1")],
)
def test_an_address_the_database_writes_its_own_way_still_verifies(api, address, stored):
    """PostgreSQL's inet gives an IPv6 address back in its own spelling; a link-local peer comes with its zone."""
    assert api.post("/api/v1/models/", {"name": "iris"}, format="json", REMOTE_ADDR=address).status_code == 201
    event = AuditEvent.objects.get(action="model.create")
    assert event.source_ip == stored
    assert verify_chain() is None
