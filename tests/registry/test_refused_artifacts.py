"""Files that are not a self-contained model are refused with a message that says how to export one.

Nothing may ever unpickle them: not the web process at upload, not the worker, and
the sandboxed validator only through torch's own restricted loaders.
"""

from __future__ import annotations

import json
import pickle
import struct
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import torch
from django.conf import settings

from controlplane.models import AuditEvent
from registry.models import ModelVersion
from tests.conftest import wait_for
from tests.models_zoo import MLP_SIGNATURE, FileCreator

SIGNATURE = json.dumps(MLP_SIGNATURE)
HOW_TO_EXPORT = ("torch.jit.save(torch.jit.script(model)", "torch.export.save(torch.export.export(model")

REFUSED = [
    # (model_files key, what the message must say)
    ("whole_pickle", "whole model pickled with torch.save(model)"),
    ("state_dict", "bare state_dict"),
    ("evil_pickle", "pickled Python object"),
    ("not_a_model", "not a PyTorch model archive"),
    ("truncated", "truncated"),
    ("absolute_path", "absolute path ('/etc/cron.d/evil')"),
    ("dotdot", "climbs out ('mlp/../../evil')"),
    ("symlink", "symbolic link ('mlp/code/link')"),
]


def upload(client, path: Path, model: str = "iris"):
    with open(path, "rb") as fh:
        return client.post(
            f"/api/v1/models/{model}/versions/", {"artifact": fh, "signature": SIGNATURE}, format="multipart"
        )


def stored_files() -> set[Path]:
    roots = (Path(settings.ARTIFACT_ROOT), Path(settings.FILE_UPLOAD_TEMP_DIR))
    return {path for root in roots for path in root.rglob("*") if path.is_file()}


def settled(model: str, version: int) -> ModelVersion:
    def check():
        v = ModelVersion.objects.get(model__name=model, version=version)
        return v if v.is_terminal else None

    return wait_for(check, timeout=90, what=f"{model} v{version} to be validated")


def rewrite_zip(source: Path, target: Path, replace: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, replace.get(info.filename, src.read(info.filename)))
    return target


@pytest.mark.django_db
@pytest.mark.parametrize(("kind", "says"), REFUSED, ids=[kind for kind, _ in REFUSED])
def test_a_refused_kind_answers_400_with_how_to_export_and_keeps_nothing(api, model_files, kind, says):
    assert api.post("/api/v1/models/", {"name": "iris"}, format="json").status_code == 201
    before = stored_files()
    response = upload(api, model_files[kind])
    assert response.status_code == 400, response.json()
    body = response.json()
    assert body["code"] == "invalid"
    assert says in body["error"]
    assert all(hint in body["error"] for hint in HOW_TO_EXPORT), body["error"]
    assert body["fields"]["artifact"] == [body["error"]]
    assert not ModelVersion.objects.exists()
    assert stored_files() == before
    refusal = AuditEvent.objects.get(action="model_version.upload")
    assert refusal.outcome == "invalid" and says in refusal.message
    assert refusal.actor == "alice (token: laptop)"


def _zip_of_empty_entries(path: Path, count: int, *, declared: int) -> Path:
    """A zip of `count` empty entries with one-character names, its end record declaring `declared`:
    47 bytes of central directory each, where zipfile builds a ZipInfo of about 500 bytes."""
    local, central = bytearray(), bytearray()
    for index in range(count):
        name = b"%x" % (index % 16)
        central += struct.pack(
            "<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0, 0, 0, 0, 0, len(local)
        )
        central += name
        local += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0) + name
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, declared, declared, len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))
    return path


@pytest.mark.django_db
@pytest.mark.parametrize("declared", ["honestly", "as one"])
def test_an_archive_of_too_many_entries_is_refused_before_they_are_read(api, tmp_path, settings, declared):
    """The member limit is checked by counting the central directory's entries, not after zipfile has
    made an object of each: 150,000 entries (7 MB) took 80 MB and seconds of the web process."""
    settings.SLIPWAY_ARCHIVE_MAX_MEMBERS = 1000
    many = _zip_of_empty_entries(tmp_path / "many.pt", 150_000, declared=0xFFFF if declared == "honestly" else 1)
    api.post("/api/v1/models/", {"name": "iris"}, format="json")
    tracemalloc.start()
    try:
        response = upload(api, many)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert response.status_code == 400, response.json()
    assert peak < 48 * 1024**2, f"{peak / 1024**2:.0f} MiB"
    assert "more than 1000 files" in response.json()["error"]
    assert not ModelVersion.objects.exists()


@pytest.mark.django_db
def test_an_empty_file_is_refused_with_how_to_export(api, tmp_path):
    api.post("/api/v1/models/", {"name": "iris"}, format="json")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    response = upload(api, empty)
    assert response.status_code == 400
    assert "empty" in response.json()["error"] and HOW_TO_EXPORT[0] in response.json()["error"]


@pytest.mark.django_db
def test_a_legacy_non_zip_torch_save_is_refused_as_a_pickle(api, tmp_path):
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    api.post("/api/v1/models/", {"name": "iris"}, format="json")
    response = upload(api, legacy)
    assert response.status_code == 400
    assert "pickled Python object" in response.json()["error"]


@pytest.mark.django_db
def test_refusing_a_pickle_never_runs_it(api, model_files):
    api.post("/api/v1/models/", {"name": "iris"}, format="json")
    assert upload(api, model_files["evil_pickle"]).status_code == 400
    assert not model_files["evil_pickle_marker"].exists()


@pytest.mark.worker
@pytest.mark.slow
def test_no_process_unpickles_a_refused_pickle_even_after_the_worker_ran(api, worker, model_files):
    marker = model_files["evil_pickle_marker"]
    api.post("/api/v1/models/", {"name": "iris"}, format="json")
    assert upload(api, model_files["evil_pickle"]).status_code == 400
    # A good upload afterwards: once it is validated, the worker has had its chance.
    assert upload(api, model_files["torchscript"]).status_code == 201
    assert settled("iris", 1).status == "ready"
    assert not marker.exists()


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.parametrize("base", ["torchscript", "pt2"])
def test_a_model_shaped_archive_hiding_a_code_running_pickle_is_rejected_without_running_it(
    api, worker, model_files, tmp_path, base
):
    """The archive passes the upload's structural checks; only loading could find the trap."""
    marker = tmp_path / "pwned"
    evil = pickle.dumps(FileCreator(str(marker)), protocol=2)  # torch.save's protocol
    members, says = {
        "torchscript": ({"mlp/data.pkl": evil, "mlp/constants.pkl": evil}, "torch could not load the archive"),
        # torch.export.load falls back to a full unpickle for these unless told not to.
        "pt2": ({"mlp/data/sample_inputs/model.pt": evil}, "pickled Python object (posix.system)"),
    }[base]
    trap = rewrite_zip(model_files[base], tmp_path / f"trap-{base}.bin", members)
    api.post("/api/v1/models/", {"name": "iris"}, format="json")
    assert upload(api, trap).status_code == 201
    version = settled("iris", 1)
    assert version.status == "rejected"
    assert says in version.rejection_reason
    assert not marker.exists()


@pytest.mark.worker
@pytest.mark.slow
def test_a_corrupt_archive_passes_upload_and_the_worker_rejects_it_with_a_reason(api, worker, model_files):
    api.post("/api/v1/models/", {"name": "iris"}, format="json")
    response = upload(api, model_files["corrupt"])
    assert response.status_code == 201, response.json()
    version = settled("iris", 1)
    assert version.status == "rejected"
    assert "'mlp/data.pkl' is corrupt" in version.rejection_reason
    assert HOW_TO_EXPORT[0] in version.rejection_reason
    assert api.get("/api/v1/models/iris/versions/1/").json()["rejection_reason"] == version.rejection_reason
    event = AuditEvent.objects.get(action="model_version.rejected")
    assert event.actor == "system"
    assert (event.target_type, event.target_id) == ("model_version", str(version.pk))
    assert event.after == {"status": "rejected", "reason": version.rejection_reason}


def _damaged(source: Path, target: Path, how: str) -> Path:
    """The model's archive with data.pkl compressed (deflate, lzma) and its compressed bytes garbled,
    or flagged encrypted: the central directory is intact, so only reading the member finds it."""
    compression = {"deflate": zipfile.ZIP_DEFLATED, "lzma": zipfile.ZIP_LZMA, "encrypted": zipfile.ZIP_STORED}[how]
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", compression=compression) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    raw = bytearray(target.read_bytes())
    with zipfile.ZipFile(target) as archive:
        info = archive.getinfo("mlp/data.pkl")
    if how == "encrypted":
        raw[info.header_offset + 6] |= 1  # the local header's flag; the central directory's below
        central = raw.find(b"PK\x01\x02")
        while central != -1:
            name_length = int.from_bytes(raw[central + 28 : central + 30], "little")
            if raw[central + 46 : central + 46 + name_length] == b"mlp/data.pkl":
                raw[central + 8] |= 1
            central = raw.find(b"PK\x01\x02", central + 4)
    else:
        start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 24
        raw[start : start + 16] = b"\xff" * 16
    target.write_bytes(bytes(raw))
    return target


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.parametrize("how", ["deflate", "lzma", "encrypted"])
def test_an_archive_whose_member_cannot_be_read_is_rejected_not_left_validating(
    api, worker, model_files, tmp_path, how
):
    """The worker's CRC check read the member and met an error it did not expect (zlib.error,
    LZMAError, RuntimeError): the task failed at every try and the version stayed 'validating'."""
    damaged = _damaged(model_files["torchscript"], tmp_path / f"{how}.pt", how)
    api.post("/api/v1/models/", {"name": "iris"}, format="json")
    assert upload(api, damaged).status_code == 201
    version = settled("iris", 1)
    assert version.status == "rejected"
    assert "corrupt" in version.rejection_reason and HOW_TO_EXPORT[0] in version.rejection_reason
