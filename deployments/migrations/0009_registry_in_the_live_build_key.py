# The registry joins the live build's key: once SLIPWAY_REGISTRY moved, a request was answered with the
# image in the old registry (and the kubernetes target deployed it from there).

from django.db import migrations, models


def registry_from_image_ref(apps, schema_editor):
    ImageBuild = apps.get_model("deployments", "ImageBuild")
    for build in ImageBuild.objects.only("pk", "image_ref").iterator():
        ImageBuild.objects.filter(pk=build.pk).update(registry=build.image_ref.split("/", 1)[0])


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0008_rollout_paused_at"),
    ]

    operations = [
        migrations.AddField(
            model_name="imagebuild",
            name="registry",
            field=models.CharField(
                default="", help_text="SLIPWAY_REGISTRY when the build was requested", max_length=255
            ),
            preserve_default=False,
        ),
        migrations.RunPython(registry_from_image_ref, migrations.RunPython.noop),
        migrations.RemoveConstraint(
            model_name="imagebuild",
            name="one_live_build_per_image",
        ),
        migrations.AddConstraint(
            model_name="imagebuild",
            constraint=models.UniqueConstraint(
                condition=models.Q(("status__in", ["failed", "cancelled"]), _negated=True),
                fields=("model_version", "variant", "runtime_version", "base_image", "registry"),
                name="one_live_build_per_image",
            ),
        ),
    ]
