"""The worker's log shows what happened, not the beat's housekeeping finding nothing to do.

The records are made by Celery's own logging calls (the beat's, the worker's "received" and
the trace's "succeeded"), so a change in how Celery logs them shows here.
"""

from __future__ import annotations

import logging

import pytest
from celery.app import trace
from celery.beat import ScheduleEntry

import controlplane.celery  # noqa: F401  (installs the filter)

SWEEP = "deployments.tasks.sweep_rollouts"
VALIDATE = "registry.tasks.validate_model_version"


class Captured(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def captured():
    handler = Captured()
    loggers = [logging.getLogger(name) for name in ("celery.beat", "celery.worker.strategy", "celery.app.trace")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield handler.lines
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def received(name: str) -> None:
    context = {"id": "abc", "name": name, "args": "()", "kwargs": "{}", "eta": None}
    logging.getLogger("celery.worker.strategy").info(trace.LOG_RECEIVED, context, extra={"data": context})


def succeeded(name: str, return_value: str) -> None:
    trace.info(trace.LOG_SUCCESS, {"id": "abc", "name": name, "runtime": 0.01, "return_value": return_value})


def sent_by_the_beat(name: str) -> None:
    entry = ScheduleEntry(name="sweep-rollouts", task=name, schedule=5.0)
    logging.getLogger("celery.beat").info("Scheduler: Sending due task %s (%s)", entry.name, entry.task)


def test_housekeeping_that_did_nothing_is_not_logged(captured):
    sent_by_the_beat(SWEEP)
    received(SWEEP)
    succeeded(SWEEP, "[]")
    assert captured == []


def test_housekeeping_that_acted_or_retries_and_other_tasks_are_logged(captured):
    succeeded(SWEEP, "[12, 14]")
    trace.info(trace.LOG_RETRY, {"id": "abc", "name": SWEEP, "exc": "the database went away"})
    received(VALIDATE)
    succeeded(VALIDATE, "'ready'")
    sent_by_the_beat("registry.tasks.some_other_periodic_task")
    assert captured == [
        f"Task {SWEEP}[abc] succeeded in 0.01s: [12, 14]",
        f"Task {SWEEP}[abc] retry: the database went away",
        f"Task {VALIDATE}[abc] received",
        f"Task {VALIDATE}[abc] succeeded in 0.01s: 'ready'",
        "Scheduler: Sending due task sweep-rollouts (registry.tasks.some_other_periodic_task)",
    ]


def test_at_debug_level_everything_is_logged(captured):
    logging.getLogger("celery.app.trace").setLevel(logging.DEBUG)
    succeeded(SWEEP, "[]")
    assert captured == [f"Task {SWEEP}[abc] succeeded in 0.01s: []"]
