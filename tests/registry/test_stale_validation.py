"""A validation whose worker died is put back in the queue and finishes."""

import contextlib
import hashlib
import os
import signal
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from django.core.files import File
from django.utils import timezone

from controlplane.models import AuditEvent
from registry import tasks
from registry.models import Model, ModelVersion, VersionStatus, artifact_storage
from tests.conftest import wait_for
from tests.models_zoo import MLP_SIGNATURE

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def _waiter(futures: list[torch.jit.Future[torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    while len(futures) == 0:
        pass
    return torch.jit.wait(futures[0])


class WaitsOnItself(torch.nn.Module):
    """forward() waits on a task that waits on itself: it never returns, and uses no CPU time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        futures: list[torch.jit.Future[torch.Tensor]] = []
        task = torch.jit.fork(_waiter, futures, x)
        futures.append(task)
        return torch.jit.wait(task)


def _version_left_validating(owner, path, started_minutes_ago: int) -> ModelVersion:
    """A version whose worker died mid-validation: no task in the queue, stuck 'validating'."""
    model = Model.objects.create(name="iris", created_by=owner, latest_version=1)
    with open(path, "rb") as fh:
        name = artifact_storage().save("iris/stuck.pt", File(fh))
    return ModelVersion.objects.create(
        model=model,
        version=1,
        artifact=name,
        filename="mlp.pt",
        size=path.stat().st_size,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        format="torchscript",
        signature=MLP_SIGNATURE,
        uploaded_by=owner,
        status=VersionStatus.VALIDATING,
        validation_started_at=timezone.now() - timedelta(minutes=started_minutes_ago),
    )


def test_a_validation_left_behind_by_a_dead_worker_is_requeued_and_finishes(alice, worker, model_files, settings):
    settings.SLIPWAY_VALIDATION_TIMEOUT_S = 60
    stuck = _version_left_validating(alice, model_files["torchscript"], started_minutes_ago=10)

    assert tasks.requeue_stale_validations() == [stuck.pk]

    def ready():
        return ModelVersion.objects.filter(pk=stuck.pk, status=VersionStatus.READY).exists()

    wait_for(ready, timeout=90, what="the requeued validation to finish")
    assert AuditEvent.objects.filter(action="model_version.validation_requeued", target_id=str(stuck.pk)).exists()
    assert AuditEvent.objects.filter(action="model_version.validated", target_id=str(stuck.pk), actor="system").exists()


def test_a_validation_that_never_finishes_is_rejected_after_its_last_attempt(alice, worker, model_files, settings):
    """Whatever keeps a validation from giving a verdict (it crashes the worker, its verdict cannot be
    stored) must not run the model again every few minutes for ever."""
    settings.SLIPWAY_VALIDATION_TIMEOUT_S = 60
    settings.SLIPWAY_VALIDATION_MAX_ATTEMPTS = 2
    stuck = _version_left_validating(alice, model_files["torchscript"], started_minutes_ago=10)
    ModelVersion.objects.filter(pk=stuck.pk).update(validation_attempts=1)

    assert tasks.requeue_stale_validations() == [stuck.pk]  # its second try
    wait_for(
        lambda: ModelVersion.objects.get(pk=stuck.pk).status == VersionStatus.READY,
        timeout=90,
        what="the second attempt to finish",
    )
    assert ModelVersion.objects.get(pk=stuck.pk).validation_attempts == 2  # counted when the worker started it

    ModelVersion.objects.filter(pk=stuck.pk).update(
        status=VersionStatus.VALIDATING, validation_started_at=timezone.now() - timedelta(minutes=10)
    )  # and left behind again, its attempts spent
    assert tasks.requeue_stale_validations() == []
    stuck.refresh_from_db()
    assert stuck.status == VersionStatus.REJECTED
    assert "started 2 times and never finished" in stuck.rejection_reason
    assert "Upload the artifact again" in stuck.rejection_reason
    event = AuditEvent.objects.filter(action="model_version.rejected", target_id=str(stuck.pk)).get()
    assert event.actor == "system" and event.after["status"] == "rejected"


def test_a_validation_still_within_its_time_is_left_alone(alice, worker, model_files, settings):
    settings.SLIPWAY_VALIDATION_TIMEOUT_S = 600
    running = _version_left_validating(alice, model_files["torchscript"], started_minutes_ago=1)
    assert tasks.requeue_stale_validations() == []
    running.refresh_from_db()
    assert running.status == VersionStatus.VALIDATING


def _sandbox_children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if b"sandbox_child.py" in cmdline and ppid == parent:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_worker_killed_mid_validation_takes_its_sandbox_child_with_it(api, worker, tmp_path):
    """The child runs in a session of its own, so the worker's death did not reach it: no one was left to
    enforce the wall-clock limit, and a model that waits on itself (no CPU time either) ran for ever."""
    import torch

    stuck = tmp_path / "stuck.pt"
    torch.jit.save(torch.jit.script(WaitsOnItself()), str(stuck))
    api.post("/api/v1/models/", {"name": "iris"}, format="json")
    signature = '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}'
    with open(stuck, "rb") as fh:
        response = api.post(
            "/api/v1/models/iris/versions/", {"artifact": fh, "signature": signature}, format="multipart"
        )
    assert response.status_code == 201, response.json()
    children = wait_for(lambda: _sandbox_children(worker.proc.pid), timeout=60, what="the validator child to start")
    worker.kill()
    worker.start()
    try:
        wait_for(lambda: not any(_alive(pid) for pid in children), timeout=10, what="the orphaned child to end")
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
