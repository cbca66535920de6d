"""The Celery app. Tasks receive row ids and are enqueued on commit."""

import logging
import os

from celery import Celery
from celery.app import trace

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("slipway")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# The beat's housekeeping, which runs every few seconds and almost always finds nothing to do.
HOUSEKEEPING = frozenset(
    {
        "deployments.tasks.sweep_rollouts",
        "deployments.tasks.recover_stale_builds",
        "registry.tasks.requeue_stale_validations",
        "registry.tasks.remove_orphan_artifacts",
    }
)


class QuietHousekeeping(logging.Filter):
    """Keep the worker's log for what happened: drop the INFO lines of housekeeping that did nothing.

    The rollout sweeper alone would write three lines every five seconds ("Sending due task",
    "received", "succeeded ...: []"), burying `make run`'s output. A housekeeping task that acted
    (it returns the ids it touched) is still logged, failures are logged as errors whatever
    happens here, and at `--loglevel DEBUG` every line is kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return True
        if record.msg in (trace.LOG_RECEIVED, trace.LOG_SUCCESS):  # the worker's, with the task's context
            context = record.args if isinstance(record.args, dict) else {}
            if context.get("name") not in HOUSEKEEPING:
                return True
            return record.msg == trace.LOG_SUCCESS and context.get("return_value") != "[]"
        if record.msg == "Scheduler: Sending due task %s (%s)":  # the beat's
            return not (isinstance(record.args, tuple) and len(record.args) == 2 and record.args[1] in HOUSEKEEPING)
        return True  # retries, rejections and everything else


for _name in ("celery.beat", "celery.worker.strategy", "celery.app.trace"):
    logging.getLogger(_name).addFilter(QuietHousekeeping())
