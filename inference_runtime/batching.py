"""Dynamic batching: stack concurrent requests along dim 0, one forward pass, split back.

The queue and the decision of what goes into a batch live on the event loop (no
locks); the forward pass runs on one dedicated model thread, so the loop keeps
decoding and answering requests meanwhile. A batch starts when it is full
(max_batch_size rows), when its oldest request has waited max_delay_ms (requests that
queued while the previous batch ran therefore wait no longer), or when every request
the server holds is already queued or running: waiting then could only add latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import numpy as np

from inference_runtime.errors import InferenceFailed, RequestTimeout, ServerBusy
from inference_runtime.metrics import Metrics
from inference_runtime.model import Outputs, describe_error

log = logging.getLogger("inference_runtime")


@dataclass(slots=True, eq=False)  # found in the queue by identity
class Item:
    arrays: list[np.ndarray]
    datatypes: tuple[str, ...]
    rows: int
    key: Any
    future: asyncio.Future
    enqueued: float  # loop.time(), for the batching deadline (call_at)
    queued_at: float  # time.perf_counter(), for the queue wait histogram: the loop's clock moves in whole ms


class Batcher:
    def __init__(
        self,
        model: Any,
        executor: Executor,
        metrics: Metrics,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        in_flight: Callable[[], int],
    ):
        self._model = model
        self._executor = executor
        self._metrics = metrics
        self._max_rows = min(max_batch_size, model.max_request_rows) if model.batchable else 1
        self._max_delay = max_delay_s
        self._max_queue = max_queue
        self._queue: deque[Item] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._flushing = False
        self._in_flight = in_flight  # requests received and not yet answered, queued or not
        self._batch: list[Item] = []  # the requests in the forward pass now
        self._running_since: float | None = None  # when the forward pass now running began
        self._abandoned: Exception | None = None  # the server stops without waiting: every request gets this
        self._loop = asyncio.get_running_loop()

    async def infer(self, arrays: list[np.ndarray], datatypes: tuple[str, ...], rows: int, key: Any, watch) -> Outputs:
        """Queue one request and wait for its own rows of every output.

        `watch.item` is set to the queued item: the request's deadline (server.Deadline) expires it.
        """
        if self._abandoned is not None:
            raise self._abandoned
        queue = self._queue
        if len(queue) >= self._max_queue:
            raise ServerBusy(f"the queue is full ({self._max_queue} requests waiting); retry shortly")
        loop = self._loop
        item = Item(arrays, datatypes, rows, key, loop.create_future(), loop.time(), time.perf_counter())
        queue.append(item)
        watch.item = item
        self._queued_rows += rows
        # Wake the batcher only when there is something new for it to decide.
        if len(queue) == 1 or self._queued_rows >= self._max_rows or self._nobody_else_coming():
            self._wakeup.set()
        return await item.future

    def expire(self, item: Item, error: Exception | None = None) -> None:
        """Past its deadline (504), or its client gone (`error`): answer it and give its place in the queue
        to someone else."""
        if item.future.done():
            return
        item.future.set_exception(error or RequestTimeout("the request timed out before the model could answer it"))
        try:
            self._queue.remove(item)
        except ValueError:
            return  # already in the forward pass
        self._queued_rows -= item.rows

    def abandon(self, error: Exception) -> int:
        """The server stops without waiting: answer every request still queued or running with `error`,
        and any request that arrives after.

        Returns how many were answered now. A forward pass already running goes on, unanswered.
        """
        self._abandoned = error
        abandoned = 0
        for item in (*self._batch, *self._queue):
            if not item.future.done():
                item.future.set_exception(error)
                abandoned += 1
        self._queue.clear()
        self._queued_rows = 0
        return abandoned

    def stalled_for(self) -> float:
        """How long the forward pass now running has run (0 when none runs)."""
        return 0.0 if self._running_since is None else self._loop.time() - self._running_since

    def flush(self) -> None:
        """Stop waiting for batches to fill (draining)."""
        self._flushing = True
        self._wakeup.set()

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        loop, queue, wakeup = self._loop, self._queue, self._wakeup
        while True:
            if not queue:
                wakeup.clear()
                await wakeup.wait()
                continue
            if not self._flushing and self._queued_rows < self._max_rows and not self._nobody_else_coming():
                deadline = queue[0].enqueued + self._max_delay
                if deadline > loop.time():
                    wakeup.clear()
                    timer = loop.call_at(deadline, wakeup.set)
                    await wakeup.wait()
                    timer.cancel()
                    continue
            batch = self._take()
            if batch:
                await self._execute(batch)

    def _nobody_else_coming(self) -> bool:
        """True when no request is being received or decoded: none could join this batch soon."""
        return self._in_flight() <= len(self._queue) + len(self._batch)

    def _take(self) -> list[Item]:
        """The oldest live request and the queued requests it can be stacked with, in order."""
        queue, batch, skipped, rows, key = self._queue, [], [], 0, None
        while queue:
            item = queue.popleft()
            self._queued_rows -= item.rows
            if item.future.done():  # timed out while queued
                continue
            if not batch:
                batch.append(item)
                rows, key = item.rows, item.key
                if key is None:
                    break
            elif item.key == key and rows + item.rows <= self._max_rows:
                batch.append(item)
                rows += item.rows
            else:
                skipped.append(item)
            if rows >= self._max_rows:
                break
        if skipped:
            queue.extendleft(reversed(skipped))
            self._queued_rows += sum(item.rows for item in skipped)
        return batch

    async def _execute(self, batch: list[Item]) -> None:
        now, started = self._loop.time(), time.perf_counter()
        metrics = self._metrics
        for item in batch:
            metrics.queue_wait.observe(started - item.queued_at)
        inputs = [item.arrays for item in batch]
        self._batch, self._running_since = batch, now
        try:
            results = await self._loop.run_in_executor(
                self._executor, run_batch, self._model, inputs, batch[0].datatypes, metrics
            )
        except Exception as exc:  # run_batch reports per request; this is a bug in it
            log.exception("a batch failed")
            results = [exc] * len(batch)
        finally:
            self._batch, self._running_since = [], None
        for item, result in zip(batch, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)


def run_batch(
    model: Any, inputs: list[list[np.ndarray]], datatypes: tuple[str, ...], metrics: Metrics
) -> list[Outputs | BaseException]:
    """On the model thread: stack, forward, check, split. A failed batch is retried one by one.

    The batch size histogram counts each batch once, with its rows, as it starts: the retries of a failed
    batch are not new batches (its rows would be counted twice, and rows/s through the model would look
    higher than what was asked for); the failed batch is counted in `metrics.failed_batches`.
    Requests stacked together share their datatypes (the batch key holds them).
    """
    if len(inputs) == 1:
        metrics.batch_size.observe(inputs[0][0].shape[0] if model.batchable else 1)
        return [_run_one(model, inputs[0], datatypes)]
    stacked = [np.concatenate(parts, axis=0) for parts in zip(*inputs, strict=True)]
    sizes = [arrays[0].shape[0] for arrays in inputs]
    total = sum(sizes)
    metrics.batch_size.observe(total)
    try:
        arrays, specs = model.forward(stacked, datatypes)
        for output in arrays:
            if output.ndim == 0 or output.shape[0] != total:
                raise InferenceFailed(
                    f"the model returned {output.shape[0] if output.ndim else 'a scalar'} rows for a batch of "
                    f"{total}: its outputs must follow its inputs' first dimension to be batched"
                )
    except Exception as exc:
        # One bad request must not fail its neighbours: run each on its own.
        log.warning("a batch of %d requests failed (%s); running them one by one", len(inputs), describe_error(exc))
        metrics.failed_batches.inc()
        return [_run_one(model, arrays, datatypes) for arrays in inputs]
    ends = list(accumulate(sizes))
    return [
        Outputs([output[end - size : end] for output in arrays], specs) for size, end in zip(sizes, ends, strict=True)
    ]


def _run_one(model: Any, arrays: list[np.ndarray], datatypes: tuple[str, ...]) -> Outputs | BaseException:
    try:
        return model.forward(arrays, datatypes)
    except Exception as exc:
        return _failure(exc)


def _failure(exc: Exception) -> Exception:
    if isinstance(exc, InferenceFailed):
        return exc
    reason = describe_error(exc, 500)
    log.warning("inference failed: %s", reason)
    return InferenceFailed(f"inference failed: {reason}")
