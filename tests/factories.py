import factory
from django.contrib.auth import get_user_model


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.django.Password("correct horse battery staple")


def bulk_versions(model, count: int, *, uploaded_by, status: str = "ready"):
    """`count` versions of `model` in one INSERT, for list tests (rows only, no artifact files)."""
    from registry.models import ModelVersion

    start = model.latest_version
    versions = ModelVersion.objects.bulk_create(
        ModelVersion(
            model=model,
            version=start + n,
            artifact=f"{model.name}/fake-{start + n}.pt",
            filename=f"model-{start + n}.pt",
            size=1000 + n,
            sha256=f"{start + n:064x}",
            format="torchscript",
            status=status,
            signature={"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]},
            uploaded_by=uploaded_by,
        )
        for n in range(1, count + 1)
    )
    model.latest_version = start + count
    model.save(update_fields=["latest_version"])
    return versions
