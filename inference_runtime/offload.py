"""Large JSON request bodies, decoded in a process of their own.

orjson's parse and numpy's conversion of a list each hold the GIL for their whole call (0.3 s for 50 MiB of flat
numbers, seconds for nested lists): on a thread they would hold up the event loop all the same, and with it
health checks and every other request. A JSON header past DECODE_INLINE_BYTES is decoded in a second process
(numpy and orjson, no torch: started at the first such request, in about 0.3 s), and its arrays come back pickled.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from inference_runtime.codec import Request, decode_request
from inference_runtime.datatypes import TensorSpec
from inference_runtime.errors import RuntimeFailure

# A JSON header this large or smaller is decoded on the event loop (about 10 ms of work): the process's round trip
# would cost a small request more than it saves.
DECODE_INLINE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Signature:
    """What decode_request reads of a model, without the model (and torch): sent along with each body."""

    inputs: list[TensorSpec]
    input_index: dict[str, int]
    bounds: list[dict[int, tuple[int, int | None]]] | None
    batchable: bool
    max_request_rows: int
    output_index: dict[str, int] | None

    @classmethod
    def of(cls, model: Any) -> Signature:
        return cls(
            model.inputs, model.input_index, model.bounds, model.batchable, model.max_request_rows, model.output_index
        )


def _start_decoder() -> None:
    # dumb-init (the image's entrypoint) sends SIGTERM, and a terminal's Ctrl-C sends SIGINT, to the whole process
    # group: the server, draining, decides when this process stops (Decoder.close).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A server that exits without a word (os._exit, SIGKILL) leaves this process waiting on a pipe it holds both
    # ends of: it goes with the server.
    threading.Thread(target=_exit_with_parent, daemon=True).start()


def _exit_with_parent() -> None:
    multiprocessing.parent_process().join()
    os._exit(0)


class Decoder:
    """The decoder process, started at the first large body and started again if it dies."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    async def decode(self, body: bytes, header_length: int | None, signature: Signature) -> Request:
        try:
            future = self._started().submit(decode_request, body, header_length, signature)
        except BrokenProcessPool:  # it died between two bodies
            self._pool = None
            future = self._started().submit(decode_request, body, header_length, signature)
        pool = self._pool
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            if self._pool is pool:
                self._pool = None  # the next large body starts a new one
            raise RuntimeFailure(
                "the process decoding large requests stopped while decoding this one (out of memory?); retry, "
                "or send the inputs as binary data (binary_data_size), which is not decoded that way"
            ) from None

    def _started(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_start_decoder
            )
        return self._pool

    def close(self) -> None:
        """Stop the process, once it has finished the body it decodes (none, after a drain)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
