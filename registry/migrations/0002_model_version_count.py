"""Model.version_count, kept exact by the database: triggers count each version inserted or deleted,
whichever way it happens (the services, a bulk_create, a shell), in the same transaction.

On SQLite, Django alters a table by building a new one and renaming it: a later migration that
does so to registry_modelversion drops these triggers, and one that does so to registry_model
fails (the triggers name it). Such a migration must drop them first and create them again after
(SQLITE_BACKWARD, SQLITE_FORWARD); tests/registry/test_version_count.py migrates a new SQLite
database all the way and checks that versions are still counted.
"""

from django.db import migrations, models

BACKFILL = """
UPDATE registry_model SET version_count =
    (SELECT COUNT(*) FROM registry_modelversion WHERE registry_modelversion.model_id = registry_model.id)
"""
# PostgreSQL: once per statement, from its transition tables, so that a bulk insert or delete
# updates each model once (a row-level trigger updating one model row per version made a
# 20,000-row insert 30 times slower); a version moved to another model, once per row.
PG_FORWARD = """
-- Both statement triggers name their transition table "changed" and pass +1 (insert) or -1 (delete).
CREATE OR REPLACE FUNCTION slipway_count_versions() RETURNS trigger AS $$
BEGIN
    UPDATE registry_model SET version_count = version_count + TG_ARGV[0]::integer * counted.n
    FROM (SELECT model_id, COUNT(*) AS n FROM changed GROUP BY model_id) counted
    WHERE registry_model.id = counted.model_id;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE OR REPLACE FUNCTION slipway_count_moved_version() RETURNS trigger AS $$
BEGIN
    UPDATE registry_model SET version_count = version_count - 1 WHERE id = OLD.model_id;
    UPDATE registry_model SET version_count = version_count + 1 WHERE id = NEW.model_id;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER model_version_count_insert AFTER INSERT ON registry_modelversion
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION slipway_count_versions('1');
CREATE TRIGGER model_version_count_delete AFTER DELETE ON registry_modelversion
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION slipway_count_versions('-1');
CREATE TRIGGER model_version_count_move AFTER UPDATE OF model_id ON registry_modelversion
    FOR EACH ROW WHEN (OLD.model_id IS DISTINCT FROM NEW.model_id) EXECUTE FUNCTION slipway_count_moved_version();
"""
PG_BACKWARD = """
DROP TRIGGER IF EXISTS model_version_count_insert ON registry_modelversion;
DROP TRIGGER IF EXISTS model_version_count_delete ON registry_modelversion;
DROP TRIGGER IF EXISTS model_version_count_move ON registry_modelversion;
DROP FUNCTION IF EXISTS slipway_count_versions();
DROP FUNCTION IF EXISTS slipway_count_moved_version();
"""
# SQLite has row-level triggers only.
SQLITE_FORWARD = [
    """CREATE TRIGGER model_version_count_insert AFTER INSERT ON registry_modelversion
       BEGIN UPDATE registry_model SET version_count = version_count + 1 WHERE id = NEW.model_id; END;""",
    """CREATE TRIGGER model_version_count_delete AFTER DELETE ON registry_modelversion
       BEGIN UPDATE registry_model SET version_count = version_count - 1 WHERE id = OLD.model_id; END;""",
    """CREATE TRIGGER model_version_count_move AFTER UPDATE OF model_id ON registry_modelversion
       WHEN OLD.model_id IS NOT NEW.model_id
       BEGIN
           UPDATE registry_model SET version_count = version_count - 1 WHERE id = OLD.model_id;
           UPDATE registry_model SET version_count = version_count + 1 WHERE id = NEW.model_id;
       END;""",
]
SQLITE_BACKWARD = [
    "DROP TRIGGER IF EXISTS model_version_count_insert;",
    "DROP TRIGGER IF EXISTS model_version_count_delete;",
    "DROP TRIGGER IF EXISTS model_version_count_move;",
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
