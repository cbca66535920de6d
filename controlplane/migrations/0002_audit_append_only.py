"""Make the audit table append-only at the database level.

PostgreSQL: a trigger refuses UPDATE and DELETE (per row) and TRUNCATE.
SQLite (the embedded default): triggers refuse UPDATE and DELETE.
"""

from django.db import migrations

PG_FORWARD = """
CREATE OR REPLACE FUNCTION slipway_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: %% on controlplane_auditevent is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_no_update_delete BEFORE UPDATE OR DELETE ON controlplane_auditevent
    FOR EACH ROW EXECUTE FUNCTION slipway_audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON controlplane_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION slipway_audit_append_only();
"""
PG_BACKWARD = """
DROP TRIGGER IF EXISTS audit_no_truncate ON controlplane_auditevent;
DROP TRIGGER IF EXISTS audit_no_update_delete ON controlplane_auditevent;
DROP FUNCTION IF EXISTS slipway_audit_append_only();
"""
SQLITE_FORWARD = [
    """CREATE TRIGGER audit_no_update BEFORE UPDATE ON controlplane_auditevent
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: UPDATE is refused'); END;""",
    """CREATE TRIGGER audit_no_delete BEFORE DELETE ON controlplane_auditevent
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: DELETE is refused'); END;""",
]
SQLITE_BACKWARD = ["DROP TRIGGER IF EXISTS audit_no_update;", "DROP TRIGGER IF EXISTS audit_no_delete;"]


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_FORWARD)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE_FORWARD:
            schema_editor.execute(statement)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_BACKWARD)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE_BACKWARD:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("controlplane", "0001_initial")]
    operations = [migrations.RunPython(forward, backward)]
