import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from controlplane.audit import Actor, record, verify_chain
from controlplane.models import AuditEvent

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
