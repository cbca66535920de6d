"""Celery's filesystem broker (the embedded default), without its half-written files.

kombu's filesystem transport creates a file and only then writes it, while readers do
not wait for it: a message file (`_put`; any consumer polling for `*.msg` may take it
empty) and an exchange's table of bound queues (`_queue_bind` creates it before it
locks it; `get_table` reads it on every publish). A process that reads at the wrong
moment gets an empty file and stops with "Unrecoverable error: JSONDecodeError" (seen
under `make run` during a rollout). Here a message is written under another name and
renamed into place, which is atomic, and a table read while it is being created is
read again. A publish also routes to the bindings its own process has made but not yet
written (see get_table).
"""

from __future__ import annotations

import os
import time
import uuid

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A leading dot: consumers match what follows the first '.', which is then not "<queue>.msg".
        partial = os.path.join(self.data_folder_out, f".{name}.partial")
        try:
            with open(partial, "wb") as fh:
                fh.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc

    def get_table(self, exchange):
        """The exchange's bindings: the shared table file's, and this process's own.

        kombu records a binding in the process's memory before it writes the file, and then
        skips binding again on other connections of the process: a publish from one of them
        in between would find no file and drop the message. Bindings the process knows of
        count even before the file has them.
        """
        table = self._file_table(exchange)
        known = self.state.exchanges.get(exchange, {}).get("table", [])
        return table + [queue for queue in map(filesystem.exchange_queue_t._make, known) if queue not in table]

    def _file_table(self, exchange):
        for _ in range(200):
            try:
                return super().get_table(exchange)
            except ValueError:  # JSONDecodeError: created, not yet written (its writer locks it only after)
                time.sleep(0.005)
        return super().get_table(exchange)


class Transport(filesystem.Transport):
    Channel = Channel

    @property
    def default_connection_params(self):
        # Folders, not a host: without a default hostname kombu does not warn
        # "No hostname was supplied" at every start.
        return {"port": self.default_port}
