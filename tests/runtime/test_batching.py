"""Dynamic batching: concurrent requests share forward passes, and each gets its own rows."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inference_runtime.batching import Batcher
from inference_runtime.errors import NotReady
from inference_runtime.metrics import Metrics
from tests.runtime.oip import binary_request, expected_outputs, json_request, parse_response

pytestmark = pytest.mark.runtime


async def _fire(url: str, bodies: list[tuple[bytes, dict]], path: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        return await asyncio.gather(*(client.post(path, content=body, headers=headers) for body, headers in bodies))


def fire(server, bodies: list[tuple[bytes, dict]], path: str) -> list[httpx.Response]:
    return asyncio.run(_fire(server.url, bodies, path))


def test_concurrent_clients_share_batches_and_get_their_own_rows(servers, zoo):
    server, module = servers["mlp"], zoo["mlp"].module
    batches_before = server.metric("slipway_inference_batch_size_count")
    singles_before = server.metric("slipway_inference_batch_size_bucket", le="1.0")
    rows_before = server.metric("slipway_inference_batch_size_sum")

    rng = np.random.default_rng(1)
    inputs, bodies = [], []
    for i in range(96):
        x = rng.standard_normal((1 + i % 3, 16)).astype(np.float32)  # 1, 2 or 3 rows per client
        x[:, 0] = i  # every client's rows are recognisable
        inputs.append({"x": x})
        bodies.append(binary_request({"x": x}) if i % 2 else (json_request({"x": x}), {}))
    responses = fire(server, bodies, "/v2/models/mlp/infer")

    for request, response in zip(inputs, responses, strict=True):
        got = parse_response(response)["output__0"]
        np.testing.assert_allclose(got, expected_outputs(module, request)["output__0"], rtol=1e-5, atol=1e-5)

    batches = server.metric("slipway_inference_batch_size_count") - batches_before
    singles = server.metric("slipway_inference_batch_size_bucket", le="1.0") - singles_before
    rows = server.metric("slipway_inference_batch_size_sum") - rows_before
    assert rows == sum(x["x"].shape[0] for x in inputs)
    assert batches < len(inputs), "no request shared a forward pass"
    assert singles < batches, "every batch had one row"
    assert server.metric("slipway_inference_queue_wait_seconds_count") >= len(inputs)


def test_requests_whose_shapes_differ_are_batched_separately(servers, zoo):
    server, module = servers["sequence"], zoo["sequence"].module
    rng = np.random.default_rng(2)
    inputs = [{"tokens": rng.integers(0, 50, size=(1 + i % 2, 3 + i % 4), dtype=np.int64)} for i in range(40)]
    responses = fire(server, [(json_request(x), {}) for x in inputs], "/v2/models/sequence/infer")
    for request, response in zip(inputs, responses, strict=True):
        got, want = parse_response(response), expected_outputs(module, request)
        for name in ("hidden", "pooled"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)


def test_a_model_whose_outputs_have_no_row_per_input_row_is_not_batched(spawn, zoo):
    """x.sum(0): stacked with others, each caller would get a slice of everyone's sum (four rows, four
    values: nothing in the shapes tells that apart)."""
    entry = zoo["batch_sum"]
    server = spawn("batch_sum", entry.path, "--max-delay-ms", "200", entry=entry).wait_ready()
    inputs = [np.full((1, 4), i, dtype=np.float32) for i in range(4)]
    responses = fire(server, [(json_request({"x": x}), {}) for x in inputs], "/v2/models/batch_sum/infer")
    for x, response in zip(inputs, responses, strict=True):
        assert response.status_code == 200, response.text
        np.testing.assert_array_equal(parse_response(response)["output__0"], x.sum(0))
    assert server.metric("slipway_inference_batch_size_count") == len(inputs)  # one forward pass each
    assert "batching is off" in server.log()


async def metric_async(client: httpx.AsyncClient, name: str) -> float:
    text = (await client.get("/metrics")).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


async def until(client: httpx.AsyncClient, name: str, value: float) -> None:
    while await metric_async(client, name) < value:
        await asyncio.sleep(0.01)


def test_full_queue_is_503_with_retry_after_and_a_late_request_is_504(spawn, zoo):
    entry = zoo["slow"]
    server = spawn("slow", entry.path, "--max-queue", "1", "--request-timeout-s", "0.3", entry=entry).wait_ready()
    x = np.ones((1, 4), dtype=np.float32)
    # A million steps: a forward pass of several seconds, far past the timeout (it is killed after the test).
    slow = json_request({"x": x, "spin": np.full((1, 1), 1_000_000, dtype=np.int64)})
    batches = server.metric("slipway_inference_batch_size_count")

    async def scenario():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            running = asyncio.create_task(client.post("/v2/models/slow/infer", content=slow))
            await until(client, "slipway_inference_batch_size_count", batches + 1)  # in the model now
            queued = asyncio.create_task(client.post("/v2/models/slow/infer", content=slow))
            await until(client, "slipway_inference_queue_depth", 1)
            refused = await client.post("/v2/models/slow/infer", content=slow)
            return refused, await asyncio.gather(running, queued)

    refused, late = asyncio.run(scenario())
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "queue is full" in refused.json()["error"]
    for response in late:
        assert response.status_code == 504
        assert "timed out" in response.json()["error"]

    assert server.metric("slipway_inference_requests_total", outcome="busy") == 1
    assert server.metric("slipway_inference_requests_total", outcome="timeout") == 2

    # The request that timed out in the queue gave its place back: the next one is queued, not refused.
    assert server.metric("slipway_inference_queue_depth") == 0
    again = server.client.post("/v2/models/slow/infer", content=slow)
    assert again.status_code == 504, again.text

    # The forward pass runs on, past the request timeout: no request could be answered in time, so
    # readiness says so (a load balancer sends traffic elsewhere); liveness does not (the pass may end).
    assert server.client.get("/v2/health/ready").status_code == 503
    stalled = server.client.get("/v2/models/slow/ready")
    assert stalled.status_code == 503
    assert "forward pass has run" in stalled.json()["error"]
    assert server.client.get("/v2/health/live").status_code == 200


def test_abandoning_answers_the_queued_requests_and_any_that_arrive_after_at_once():
    """What the server does when it stops without waiting (a second SIGTERM, the drain timeout)."""

    class Model:  # never reached: nothing runs once the batcher is abandoned
        batchable, max_request_rows = True, 16

    async def scenario():
        executor = ThreadPoolExecutor(1)
        batcher = Batcher(
            Model(), executor, Metrics("m", "1"), max_batch_size=4, max_delay_s=60, max_queue=8, in_flight=lambda: 2
        )
        row = [np.zeros((1, 4), dtype=np.float32)]
        queued = asyncio.ensure_future(batcher.infer(row, ("FP32",), 1, None, SimpleNamespace(item=None)))
        await asyncio.sleep(0)
        stopping = NotReady("the server is stopping")
        assert batcher.abandon(stopping) == 1
        with pytest.raises(NotReady):
            await queued
        with pytest.raises(NotReady):  # arrived after: not queued for a process about to exit
            await asyncio.wait_for(batcher.infer(row, ("FP32",), 1, None, SimpleNamespace(item=None)), 5)
        assert batcher.depth == 0
        executor.shutdown()

    asyncio.run(scenario())


def test_a_failed_batch_is_counted_once_and_its_requests_then_run_alone(spawn, zoo):
    """A batch with one bad request fails; its requests run again one at a time, so that only the bad one
    fails. The batch size histogram counts the batch once, as it was formed (not its rows again for each
    rerun), and the failure is counted on its own."""
    entry = zoo["slow"]
    server = spawn("slow", entry.path, "--max-batch-size", "8", entry=entry).wait_ready()
    names = (
        "slipway_inference_batch_size_count",
        "slipway_inference_batch_size_sum",
        "slipway_inference_failed_batches_total",
    )
    before = {name: server.metric(name) for name in names}
    # 200,000 steps: a forward pass of about two seconds, while the four below queue up behind it.
    blocker = json_request({"x": np.ones((1, 4), np.float32), "spin": np.full((1, 1), 200_000, np.int64)})
    rows = [np.full((1, 4), value, np.float32) for value in (1, 2, -3, 4)]  # -3: the model refuses it

    async def scenario():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            running = asyncio.create_task(client.post("/v2/models/slow/infer", content=blocker))
            await until(client, "slipway_inference_batch_size_count", before[names[0]] + 1)  # in the model now
            queued = [
                asyncio.create_task(
                    client.post(
                        "/v2/models/slow/infer", content=json_request({"x": x, "spin": np.ones((1, 1), np.int64)})
                    )
                )
                for x in rows
            ]
            await until(client, "slipway_inference_queue_depth", len(rows))
            assert not running.done(), "the first forward pass ended before the others queued: make it longer"
            return await running, await asyncio.gather(*queued)

    first, answers = asyncio.run(scenario())
    assert first.status_code == 200, first.text
    for x, response in zip(rows, answers, strict=True):
        if x[0, 0] < 0:
            assert response.status_code == 500
            assert "x must not be negative" in response.json()["error"]
        else:
            np.testing.assert_allclose(parse_response(response)["output__0"], x * 2)
    assert "a batch of 4 requests failed" in server.log()

    after = {name: server.metric(name) for name in names}
    assert after[names[0]] - before[names[0]] == 2  # the first request alone, then the four together
    assert after[names[1]] - before[names[1]] == 1 + len(rows)  # every row once
    assert after[names[2]] - before[names[2]] == 1
