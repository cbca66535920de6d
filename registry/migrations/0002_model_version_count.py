"""Model.version_count, kept exact by the database: triggers count each version inserted or deleted,
whichever way it happens (the services, the admin, a bulk_create), in the same transaction.
"""

from django.db import migrations, models

BACKFILL = """
UPDATE registry_model SET version_count =
    (SELECT COUNT(*) FROM registry_modelversion WHERE registry_modelversion.model_id = registry_model.id)
"""
PG_FORWARD = """
CREATE OR REPLACE FUNCTION slipway_count_versions() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE registry_model SET version_count = version_count + 1 WHERE id = NEW.model_id;
    ELSE
        UPDATE registry_model SET version_count = version_count - 1 WHERE id = OLD.model_id;
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER model_version_count AFTER INSERT OR DELETE ON registry_modelversion
    FOR EACH ROW EXECUTE FUNCTION slipway_count_versions();
"""
PG_BACKWARD = """
DROP TRIGGER IF EXISTS model_version_count ON registry_modelversion;
DROP FUNCTION IF EXISTS slipway_count_versions();
"""
SQLITE_FORWARD = [
    """CREATE TRIGGER model_version_count_insert AFTER INSERT ON registry_modelversion
       BEGIN UPDATE registry_model SET version_count = version_count + 1 WHERE id = NEW.model_id; END;""",
    """CREATE TRIGGER model_version_count_delete AFTER DELETE ON registry_modelversion
       BEGIN UPDATE registry_model SET version_count = version_count - 1 WHERE id = OLD.model_id; END;""",
]
SQLITE_BACKWARD = [
    "DROP TRIGGER IF EXISTS model_version_count_insert;",
    "DROP TRIGGER IF EXISTS model_version_count_delete;",
]


def forward(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_FORWARD)
    elif vendor == "sqlite":
        for statement in SQLITE_FORWARD:
            schema_editor.execute(statement)
    else:
        raise RuntimeError(f"Slipway runs on PostgreSQL or SQLite, not {vendor}: set DATABASE_URL to one of them.")
    schema_editor.execute(BACKFILL)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_BACKWARD)
    else:
        for statement in SQLITE_BACKWARD:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("registry", "0001_initial")]
    operations = [
        migrations.AddField(
            model_name="model",
            name="version_count",
            field=models.PositiveIntegerField(
                default=0, editable=False, help_text="How many versions exist now (kept by the database)."
            ),
        ),
        migrations.RunPython(forward, backward),
    ]
