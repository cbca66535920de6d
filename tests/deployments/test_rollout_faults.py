"""Fault injection: the worker is killed with SIGKILL at every step of a rollout.

After each kill a new worker starts; the sweeper (a real `celery beat`) finds the rollout whose lease
ran out and the reconciler carries on from the stored state. At the end the
rollout has finished, no side effect happened twice (one runtime process per
replica, one event per step, one audit record per outcome, one ledger interval per
traffic split), and the audit chain verifies.
"""

from __future__ import annotations

import collections
import time

import pytest

from controlplane.audit import verify_chain
from controlplane.models import AuditEvent
from deployments.engine import deployment_ref
from deployments.models import Deployment, Rollout
from deployments.targets import get_target
from tests.deployments.rollouts import answers, deploy, ledger_of, serving, upload, wait_state

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def test_a_worker_killed_at_every_step_still_finishes_each_rollout_once(
    api, dev, model_name, model_dir, worker, scheduler
):
    v1, v2 = (upload(api, model_name, model_dir[k]) for k in ("one", "two"))
    first = deploy(api, model_name, v1)
    wait_state(first["rollout"]["id"], "succeeded")

    plan = {
        "strategy": "canary",
        "steps": [{"set_weight": 50}, {"pause": {"duration": "1s"}}, {"analysis": {"duration": "1s"}}],
    }
    rollout_id = deploy(api, model_name, v2, plan=plan)["rollout"]["id"]
    seen, kills = set(), 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        rollout = Rollout.objects.get(pk=rollout_id)
        if rollout.is_terminal:
            break
        point = (rollout.state, rollout.step_index)
        if point not in seen:
            seen.add(point)
            time.sleep(0.1)  # land somewhere inside the next step, not only between steps
            worker.kill()
            kills += 1
            worker.start()
        time.sleep(0.05)
    rollout = wait_state(rollout_id, "succeeded", timeout=60)
    assert kills >= 4, seen

    deployment = Deployment.objects.get(pk=first["id"])
    status = get_target("local").status(deployment_ref(deployment))
    assert serving(status) == {2: 100}
    for slot in (1, 2):  # release 1 kept warm; not one replica started twice
        assert status.releases[slot].desired == 1 and len(status.releases[slot].replicas) == 1
    assert answers(deployment.endpoint, model_name, 4) == [2.0] * 4

    messages = collections.Counter(e.message for e in rollout.events.exclude(kind="warning"))
    [analysed] = [message for message in messages if message.startswith("Analysis passed")]
    assert analysed.startswith("Analysis passed: 1 of 1 replicas ready; "), analysed  # the timeline says it once
    repeated = {message: n for message, n in messages.items() if n > 1}
    assert not repeated, repeated
    # The ledger of what served has each split once: 100% on 1, the canary, 100% on 2.
    assert ledger_of(deployment.pk) == [(1, 100, False), (1, 50, False), (2, 50, False), (2, 100, True)]
    assert AuditEvent.objects.filter(action="rollout.succeeded", target_id=str(rollout_id)).count() == 1
    assert verify_chain() is None
