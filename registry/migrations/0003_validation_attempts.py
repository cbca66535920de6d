"""ModelVersion.validation_attempts: how many times a worker started validating it.

On SQLite, adding the column rebuilds registry_modelversion, which drops its version-count
triggers (see 0002): they are dropped first and made again after.
"""

from importlib import import_module

from django.db import migrations, models

counting = import_module("registry.migrations.0002_model_version_count")  # its trigger statements


def _sqlite(statements):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "sqlite":
            for statement in statements:
                schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [("registry", "0002_model_version_count")]

    operations = [
        migrations.RunPython(_sqlite(counting.SQLITE_BACKWARD), _sqlite(counting.SQLITE_FORWARD)),
        migrations.AddField(
            model_name="modelversion",
            name="validation_attempts",
            field=models.PositiveSmallIntegerField(default=0),
        ),
        migrations.RunPython(_sqlite(counting.SQLITE_FORWARD), _sqlite(counting.SQLITE_BACKWARD)),
    ]
