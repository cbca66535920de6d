"""A worker's claim on a row kept alive while it works: a build's heartbeat, a rollout step's lease."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from django.db import DatabaseError, connection

log = logging.getLogger(__name__)


class KeepAlive:
    """Runs `beat` on a thread of its own every `every` seconds, from start until `stop()`.

    The work it keeps alive may be silent for minutes (pip downloading a large wheel, an API server that
    answers slowly), so the claim cannot be renewed from the work itself. `beat` should touch only this
    worker's own claim (its attempt, its lease token), so that a worker the sweepers already replaced does
    not keep its successor's claim alive. A worker that dies stops beating, and its claim runs out.
    A database blip is logged and the next beat tries again, while the claim still holds.
    """

    def __init__(self, name: str, every: float, beat: Callable[[], object]):
        self.name, self.every, self.beat = name, every, beat
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopped.wait(self.every):
                try:
                    self.beat()
                except DatabaseError as exc:
                    log.warning("%s: could not beat: %s", self.name, exc)
                    connection.close()  # the next beat opens a fresh connection
        finally:
            connection.close()  # this thread's own

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)
