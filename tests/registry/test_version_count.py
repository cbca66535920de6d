"""A model's version count is kept by the database, exact whichever way versions come and go.

The versions list and page read it instead of counting 10,000 rows on every request.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from controlplane.audit import Actor
from registry import services
from registry.models import Model, ModelVersion
from tests.conftest import ROOT
from tests.factories import bulk_versions
from tests.models_zoo import MLP_SIGNATURE

pytestmark = pytest.mark.django_db


@pytest.fixture
def iris(alice):
    return services.create_model("iris", actor=Actor(user=alice))


def kept(model: Model) -> int:
    return Model.objects.values_list("version_count", flat=True).get(pk=model.pk)


def test_uploads_deletes_and_bulk_inserts_are_all_counted(api, iris, alice, model_files):
    with open(model_files["torchscript"], "rb") as fh:
        response = api.post(
            "/api/v1/models/iris/versions/",
            {"artifact": fh, "signature": json.dumps(MLP_SIGNATURE)},
            format="multipart",
        )
    assert response.status_code == 201, response.json()
    assert kept(iris) == 1
    iris.refresh_from_db()
    bulk_versions(iris, 30, uploaded_by=alice)
    assert kept(iris) == 31
    services.delete_version(ModelVersion.objects.get(model=iris, version=1), actor=Actor(user=alice))
    ModelVersion.objects.filter(model=iris, version__gt=21).delete()
    assert kept(iris) == ModelVersion.objects.filter(model=iris).count() == 20
    body = api.get("/api/v1/models/iris/").json()
    assert (body["latest_version"], body["version_count"]) == (21, 20)  # the highest that exists


def test_a_rolled_back_insert_is_not_counted(iris, alice):
    with pytest.raises(RuntimeError), transaction.atomic():
        bulk_versions(iris, 3, uploaded_by=alice)
        assert kept(iris) == 3  # seen inside the transaction
        raise RuntimeError("the upload failed")
    assert kept(iris) == 0


def test_saving_a_model_read_earlier_keeps_the_count_the_database_has(iris, alice):
    stale = Model.objects.get(pk=iris.pk)
    bulk_versions(iris, 5, uploaded_by=alice)
    stale.description = "edited while versions arrived"
    stale.save()
    assert kept(iris) == 5
    assert Model.objects.get(pk=iris.pk).description == "edited while versions arrived"


def test_one_statement_over_several_models_counts_each(iris, alice):
    other = services.create_model("other", actor=Actor(user=alice))
    template = bulk_versions(iris, 1, uploaded_by=alice)[0]
    rows = [(iris, n) for n in range(2, 6)] + [(other, n) for n in range(1, 3)]
    ModelVersion.objects.bulk_create(  # one INSERT for both models
        ModelVersion(**{**_fields(template), "model_id": model.pk, "version": number}) for model, number in rows
    )
    assert (kept(iris), kept(other)) == (5, 2)
    ModelVersion.objects.filter(version__in=[1, 2]).delete()  # one DELETE across both
    assert (kept(iris), kept(other)) == (3, 0)


def test_a_version_moved_to_another_model_is_counted_there(iris, alice):
    other = services.create_model("other", actor=Actor(user=alice))
    bulk_versions(iris, 3, uploaded_by=alice)
    ModelVersion.objects.filter(model=iris, version=3).update(model=other)
    ModelVersion.objects.filter(model=iris, version=2).update(model=iris)  # not moved: not counted twice
    assert (kept(iris), kept(other)) == (2, 1)


def _fields(version: ModelVersion) -> dict:
    return {f.attname: getattr(version, f.attname) for f in ModelVersion._meta.concrete_fields if not f.primary_key}


def test_a_model_loaded_in_part_saves_only_what_it_loaded(iris, alice):
    partial = Model.objects.only("description").get(pk=iris.pk)
    bulk_versions(iris, 2, uploaded_by=alice)
    partial.description = "only this"
    partial.save()
    iris.refresh_from_db()
    assert (iris.description, iris.version_count, iris.name) == ("only this", 2, "iris")


def test_the_list_and_the_page_show_the_count_without_counting_rows(api, client, iris, alice):
    bulk_versions(iris, 120, uploaded_by=alice)
    ModelVersion.objects.filter(model=iris, version__in=[3, 60]).delete()
    client.force_login(alice)
    for url, get in (("/api/v1/models/iris/versions/", api.get), ("/models/iris/?page=3", client.get)):
        get(url)  # warm up: the token's last-used stamp, the session
        with CaptureQueriesContext(connection) as captured:
            response = get(url)
        assert response.status_code == 200
        assert not [
            q["sql"] for q in captured.captured_queries if "COUNT(*)" in q["sql"] and "modelversion" in q["sql"]
        ]
    assert api.get("/api/v1/models/iris/versions/").json()["count"] == 118
    page = client.get("/models/iris/?page=3").content.decode()
    assert "Page 3 of 3" in page and "<strong>v1</strong>" in page and "<strong>v3</strong>" not in page
    models = client.get("/models/").content.decode()  # the models list shows each one's count
    assert '<td class="num">118</td>\n      <td class="num">v120' in models


def test_a_filtered_list_counts_what_the_filter_keeps(api, iris, alice):
    bulk_versions(iris, 7, uploaded_by=alice)
    bulk_versions(iris, 3, uploaded_by=alice, status="rejected")
    assert api.get("/api/v1/models/iris/versions/?status=rejected").json()["count"] == 3
    assert api.get("/api/v1/models/iris/versions/").json()["count"] == 10


SQLITE_CHECK = """
import django, json
django.setup()
from django.contrib.auth.models import User
from registry.models import Model, ModelVersion
a, b = Model.objects.get(name="a"), Model.objects.get(name="b")
v = ModelVersion.objects.get(model=a, version=1)
ModelVersion.objects.bulk_create(ModelVersion(**{**{f.attname: getattr(v, f.attname)
    for f in ModelVersion._meta.concrete_fields if not f.primary_key}, "model_id": b.pk, "version": n})
    for n in (1, 2, 3))
ModelVersion.objects.filter(model=b, version=1).delete()
ModelVersion.objects.filter(model=a, version=4).update(model=b)
print(json.dumps(dict(Model.objects.values_list("name", "version_count"))))
"""


def test_the_embedded_sqlite_database_counts_versions_too(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | {"SLIPWAY_VAR_DIR": str(tmp_path)}

    def manage(*args: str) -> None:
        subprocess.run([sys.executable, "manage.py", *args, "--no-input", "-v0"], env=env, cwd=ROOT, check=True)

    # Versions made before the count existed (the registry's first migration, whose columns never change)...
    manage("migrate", "registry", "0001")
    with sqlite3.connect(tmp_path / "slipway.sqlite3") as db:
        db.execute(
            "INSERT INTO auth_user (username, password, is_superuser, is_staff, is_active, first_name, last_name,"
            " email, date_joined, last_login) VALUES ('u', '', 0, 0, 1, '', '', '', '2026-01-01', '2026-01-01')"
        )
        for name in ("a", "b"):
            db.execute(
                "INSERT INTO registry_model (name, description, created_by_id, created_at, latest_version)"
                " VALUES (?, '', 1, '2026-01-01', 0)",
                (name,),
            )
        for version in range(1, 5):
            db.execute(
                "INSERT INTO registry_modelversion (model_id, version, artifact, filename, size, sha256, format,"
                " status, rejection_reason, signature, metadata, uploaded_by_id, created_at)"
                " VALUES (1, ?, 'a.pt', 'a.pt', 1, '', 'torchscript', 'ready', '', '{}', '{}', 1, '2026-01-01')",
                (version,),
            )
    # ... are counted by the migration; after every later one, inserts, deletes and moves are counted.
    manage("migrate")
    with sqlite3.connect(tmp_path / "slipway.sqlite3") as db:
        assert dict(db.execute("SELECT name, version_count FROM registry_model")) == {"a": 4, "b": 0}
    env |= {"DJANGO_SETTINGS_MODULE": "controlplane.settings", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SQLITE_CHECK], env=env, cwd=ROOT, check=True, capture_output=True)
    assert json.loads(done.stdout) == {"a": 3, "b": 3}
