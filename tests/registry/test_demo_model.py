"""`make demo-model`: the tour's model, uploaded as it says, validates with the signature it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from registry.models import ModelVersion
from tests.conftest import ROOT, wait_for


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.parametrize("format", ["torchscript", "pt2"])
def test_the_demo_model_uploads_and_validates_with_the_signature_it_prints(api, worker, tmp_path, format):
    out = tmp_path / f"iris.{'pt' if format == 'torchscript' else 'pt2'}"
    env = {**os.environ, "SLIPWAY_BIND": "127.0.0.1:8123"}
    made = subprocess.run(
        [sys.executable, "manage.py", "demo_model", "--format", format, "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    signature = json.loads(made.stdout.strip().splitlines()[-1])
    assert signature == {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]}
    assert f"-F artifact=@{out}" in made.stderr and "http://127.0.0.1:8123/api/v1/models/iris/versions/" in made.stderr

    assert api.post("/api/v1/models/", {"name": "iris"}, format="json").status_code == 201
    with open(out, "rb") as fh:
        response = api.post(
            "/api/v1/models/iris/versions/", {"artifact": fh, "signature": json.dumps(signature)}, format="multipart"
        )
    assert response.status_code == 201, response.json()
    assert response.json()["format"] == format.replace("pt2", "torch_export")

    def settled():
        version = ModelVersion.objects.get(model__name="iris", version=1)
        return version if version.is_terminal else None

    version = wait_for(settled, timeout=120, what="the demo model to be validated")
    assert version.status == "ready", version.rejection_reason
    assert version.parameter_count == 4 * 16 + 16 + 16 * 3 + 3
    assert version.signature["outputs"][0]["shape"] == [-1, 3]
