"""The environment an audit event concerns, indexed for the audit log's environment filter.

On SQLite, adding a NOT NULL column with a default rebuilds the table, and the rebuild
drops the append-only triggers of 0002: they are installed again here. PostgreSQL adds
the column in place (no row is updated, so its trigger never fires) and keeps its triggers.
"""

from django.db import migrations, models

SQLITE_TRIGGERS = [
    """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON controlplane_auditevent
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: UPDATE is refused'); END;""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON controlplane_auditevent
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: DELETE is refused'); END;""",
]


def reinstall_sqlite_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE_TRIGGERS:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("controlplane", "0002_audit_append_only")]
    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="environment",
            field=models.CharField(blank=True, db_index=True, default="", max_length=100),
        ),
        migrations.RunPython(reinstall_sqlite_triggers, migrations.RunPython.noop),
    ]
