"""Celery's filesystem broker (the embedded default), without its half-written messages.

kombu's filesystem transport creates a message file and only then writes it, while a
consumer takes any file whose name ends in `.msg` without locking. A worker that polls
at the wrong moment reads an empty file and stops with "Unrecoverable error:
JSONDecodeError" (seen under `make run` during a rollout). Here a message is written
under a name no consumer looks at, then renamed into place, which is atomic.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A leading dot: the consumer matches on what follows the first '.', which is then not "<queue>.msg".
        partial = os.path.join(self.data_folder_out, f".{name}.partial")
        try:
            with open(partial, "wb") as fh:
                fh.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
