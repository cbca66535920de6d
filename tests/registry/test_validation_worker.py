"""Upload -> ready through the API and a real Celery worker validating in the sandbox."""

import json

import pytest

from registry.models import ModelVersion
from tests.conftest import wait_for
from tests.models_zoo import MLP_SIGNATURE

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def _upload(api, model, path, **fields):
    with open(path, "rb") as fh:
        return api.post(f"/api/v1/models/{model}/versions/", {"artifact": fh, **fields}, format="multipart")


def _settled(model, version):
    def check():
        v = ModelVersion.objects.get(model__name=model, version=version)
        return v if v.status in ("ready", "rejected") else None

    return wait_for(check, timeout=90, what=f"{model} v{version} to be validated")


def test_a_torchscript_upload_becomes_ready_with_its_measured_facts(api, worker, model_files):
    assert api.post("/api/v1/models/", {"name": "iris"}, format="json").status_code == 201
    response = _upload(api, "iris", model_files["torchscript"], signature=json.dumps(MLP_SIGNATURE))
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["version"] == 1 and body["format"] == "torchscript" and body["status"] == "pending"

    version = _settled("iris", 1)
    assert version.status == "ready", version.rejection_reason
    detail = api.get("/api/v1/models/iris/versions/1/").json()
    assert detail["parameter_count"] == 4 * 8 + 8 + 8 * 3 + 3
    assert detail["signature"]["inputs"] == MLP_SIGNATURE["inputs"]
    assert detail["signature"]["outputs"] == [{"name": "output__0", "datatype": "FP32", "shape": [-1, 3]}]
    assert detail["load_time_ms"] > 0


def test_a_pt2_upload_reads_its_signature_from_the_archive(api, worker, model_files):
    api.post("/api/v1/models/", {"name": "iris"}, format="json")
    response = _upload(api, "iris", model_files["pt2"])
    assert response.status_code == 201, response.json()
    assert response.json()["format"] == "torch_export"
    version = _settled("iris", 1)
    assert version.status == "ready", version.rejection_reason
    assert version.signature["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert version.parameter_count == 4 * 8 + 8 + 8 * 3 + 3


def test_a_signature_the_model_does_not_accept_is_rejected_with_a_reason(api, worker, model_files):
    api.post("/api/v1/models/", {"name": "iris"}, format="json")
    wrong = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 5]}]}
    assert _upload(api, "iris", model_files["torchscript"], signature=json.dumps(wrong)).status_code == 201
    version = _settled("iris", 1)
    assert version.status == "rejected"
    assert "does not accept its signature" in version.rejection_reason
    assert "[-1, 5]" in version.rejection_reason


def _validated_scripted(api, tmp_path, module):
    """`module` scripted, uploaded as iris v1 with an x [-1, 4] signature, and validated by the worker."""
    import torch

    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    api.post("/api/v1/models/", {"name": "iris"}, format="json")
    signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}
    assert _upload(api, "iris", path, signature=json.dumps(signature)).status_code == 201
    return _settled("iris", 1)


def test_an_output_name_that_cannot_be_stored_is_rejected_not_left_validating(api, worker, tmp_path):
    """The outputs' names come from the model (the keys of the dict forward() returns); one with a NUL,
    which PostgreSQL refuses, failed the task at every try and the version stayed 'validating'."""
    import torch

    class NulKey(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"lo\x00gits": x}

    version = _validated_scripted(api, tmp_path, NulKey())
    assert version.status == "rejected"
    assert "NUL" in version.rejection_reason and "outputs[0].name" in version.rejection_reason


def test_a_parameter_count_past_what_can_be_stored_is_rejected_not_left_validating(api, worker, tmp_path):
    """Parameters that are expanded views of one element count 3 * 2**62 (a 2.6 KB file): more than a
    bigint holds, so storing the verdict failed the task at every try and the version stayed 'validating'."""
    import torch

    class Expanded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for name in ("a", "b", "c"):
                setattr(self, name, torch.nn.Parameter(torch.zeros(1).expand(2**31, 2**31)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    version = _validated_scripted(api, tmp_path, Expanded())
    assert version.status == "rejected"
    assert "13835058055282163712 parameters" in version.rejection_reason
