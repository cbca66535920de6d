"""Each bad request gets the right 4xx and a JSON error, and the server stays ready."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import zlib

import httpx
import numpy as np
import pytest

from inference_runtime.errors import PayloadTooLarge
from inference_runtime.server import Inflate, decode_body
from tests.runtime.oip import binary_request, expected_outputs, json_request, parse_response

pytestmark = pytest.mark.runtime

X = np.arange(32, dtype=np.float32).reshape(2, 16) / 10


def infer_json(**overrides) -> bytes:
    tensor = {"name": "x", "shape": [2, 16], "datatype": "FP32", "data": X.reshape(-1).tolist(), **overrides}
    return json.dumps({"inputs": [tensor]}).encode()


def lying_header(delta: int) -> tuple[bytes, dict]:
    body, headers = binary_request({"x": X})
    headers["Inference-Header-Content-Length"] = str(int(headers["Inference-Header-Content-Length"]) + delta)
    return body, headers


CASES = {
    "wrong input name": (infer_json(name="y"), {}, 400, "unexpected input 'y'"),
    "wrong shape": (infer_json(shape=[2, 15]), {}, 400, "has shape [2, 15]"),
    "wrong rank": (infer_json(shape=[32]), {}, 400, "has shape [32]"),
    "wrong datatype": (infer_json(datatype="FP64"), {}, 400, "must be FP32"),
    "BYTES datatype": (infer_json(datatype="BYTES"), {}, 400, "must be FP32"),
    "data shorter than the shape": (infer_json(shape=[3, 16]), {}, 400, "48 elements"),
    "strings as data": (infer_json(data=["1.0"] * 32), {}, 400, "holds strings"),
    "a boolean among numbers": (infer_json(data=[1, True] + [0.5] * 30), {}, 400, "holds booleans among numbers"),
    "ragged nested data": (infer_json(data=[[1.0] * 16, [1.0] * 15]), {}, 400, "ragged"),
    "no data": (b'{"inputs": [{"name": "x", "shape": [2, 16], "datatype": "FP32"}]}', {}, 400, "neither 'data'"),
    "null data": (infer_json(data=None), {}, 400, "holds values of mixed or unsupported types"),
    "a zero dimension": (infer_json(shape=[0, 16], data=[]), {}, 400, "positive integers"),
    "malformed JSON": (b'{"inputs": [', {}, 400, "not valid JSON"),
    "a JSON list": (b"[1, 2]", {}, 400, "JSON object"),
    "no inputs": (b'{"inputs": []}', {}, 400, "non-empty 'inputs'"),
    "unknown output": (json_request({"x": X}, outputs=[{"name": "nope"}]), {}, 400, "unknown output 'nope'"),
    "header length past the body": (*lying_header(10_000), 400, "Inference-Header-Content-Length is"),
    "header length too short": (*lying_header(-5), 400, "not valid JSON"),
    "header length too long": (*lying_header(+8), 400, "not valid JSON"),
    "header length not a number": (
        binary_request({"x": X})[0],
        {"Inference-Header-Content-Length": "many"},
        400,
        "not a number",
    ),
    "both data and binary data": (
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [2, 16],
                        "datatype": "FP32",
                        "data": X.reshape(-1).tolist(),
                        "parameters": {"binary_data_size": X.nbytes},
                    }
                ]
            }
        ).encode()
        + X.tobytes(),
        None,  # header filled in by the test
        400,
        "has both 'data' and binary_data_size",
    ),
    "binary size not matching the shape": (
        json.dumps(
            {"inputs": [{"name": "x", "shape": [2, 16], "datatype": "FP32", "parameters": {"binary_data_size": 100}}]}
        ).encode()
        + X.tobytes(),
        None,  # header filled in by the test
        400,
        "binary_data_size is 100",
    ),
    "gzip that is not gzip": (b"definitely not gzip", {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
    "gzip cut short": (gzip.compress(infer_json())[:-8], {"Content-Encoding": "gzip"}, 400, "truncated gzip"),
    "more gzip members than a client sends": (
        gzip.compress(infer_json()) + gzip.compress(b"") * 40_000,  # each member was a copy of the rest: seconds
        {"Content-Encoding": "gzip"},
        400,
        "more than 64 gzip members",
    ),
    "deflate with bytes after it": (
        zlib.compress(infer_json()) + b"junk",
        {"Content-Encoding": "deflate"},
        400,
        "after the end of its deflate data",
    ),
    "an id that is not a string": (json_request({"x": X}, id=[[[1]]] * 3), {}, 400, "'id' must be a string"),
    "more dimensions than any model takes": (infer_json(shape=[1] * 65, data=[1.0]), {}, 400, "up to 32"),
    "more rows than the batch size": (
        json_request({"x": np.zeros((33, 16), dtype=np.float32)}),
        {},
        400,
        "at most 32 per request",
    ),
    "binary_data_output that is not a boolean": (
        json_request({"x": X}, parameters={"binary_data_output": "false"}),
        {},
        400,
        "'binary_data_output' must be true or false",
    ),
    "binary_data that is not a boolean": (
        json_request({"x": X}, outputs=[{"name": "output__0", "parameters": {"binary_data": "no"}}]),
        {},
        400,
        "'binary_data' must be true or false",
    ),
    "an output asked for twice": (
        json_request({"x": X}, outputs=[{"name": "output__0"}, {"name": "output__0"}]),
        {},
        400,
        "requested twice",
    ),
    "a value too large for FP32": (infer_json(data=[1e39] + [0.0] * 31), {}, 400, "out of range for FP32"),
    "an unknown content encoding": (infer_json(), {"Content-Encoding": "br"}, 415, "'br' is not supported"),
    # Wrong JSON types: each says what to send instead.
    "a name that is a number": (infer_json(name=5), {}, 400, "an input has a 'name' that is a number: give each"),
    "no name": (
        b'{"inputs": [{"shape": [2, 16], "datatype": "FP32", "data": []}]}',
        {},
        400,
        "an input has no 'name': give each input its name as a string; the model takes x (FP32 [-1, 16])",
    ),
    "a name too long to echo": (infer_json(name="y" * 100_000), {}, 400, "unexpected input 'yyyyyyyy"),
    "a datatype that is a list": (infer_json(datatype=["FP32"]), {}, 400, "'datatype' that is a list: send the string"),
    "no datatype": (infer_json(datatype=None), {}, 400, "input 'x' has no 'datatype': send the string 'FP32'"),
    "a shape that is a string": (infer_json(shape="2, 16"), {}, 400, "needs a shape: a list of up to 32 positive"),
    "a shape of floats": (infer_json(shape=[2.0, 16.0]), {}, 400, "needs a shape: a list of up to 32 positive"),
    "a shape of booleans": (infer_json(shape=[True, 16]), {}, 400, "needs a shape: a list of up to 32 positive"),
    "input parameters that are a list": (
        infer_json(parameters=["binary_data_size", 128]),
        {},
        400,
        "input 'x': 'parameters' must be an object, such as {\"binary_data_size\": 64}, not a list",
    ),
    "request parameters that are a string": (
        json_request({"x": X}, parameters="binary_data_output"),
        {},
        400,
        "the request's 'parameters' must be an object",
    ),
    "output parameters that are a list": (
        json_request({"x": X}, outputs=[{"name": "output__0", "parameters": [True]}]),
        {},
        400,
        "output 'output__0': 'parameters' must be an object",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_gets_a_json_error_and_the_server_stays_ready(servers, case):
    server = servers["mlp"]
    body, headers, status, message = CASES[case]
    if headers is None:
        header_length = body.index(b"}]}") + 3
        headers = {"Inference-Header-Content-Length": str(header_length)}
    response = server.client.post("/v2/models/mlp/infer", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]
    assert len(response.content) < 2000, "the error echoes the request"
    assert_still_serving(server)


def assert_still_serving(server) -> None:
    assert server.client.get("/v2/health/ready").status_code == 200
    response = server.client.post("/v2/models/mlp/infer", content=infer_json())
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "path",
    ["/v2/models/nope/infer", "/v2/models/mlp/versions/2/infer", "/v2/models/nope", "/v2/models/mlp/versions/9"],
)
def test_unknown_model_or_version_is_404(servers, path):
    server = servers["mlp"]
    response = server.client.post(path, content=infer_json()) if path.endswith("infer") else server.client.get(path)
    assert response.status_code == 404
    assert "this server serves 'mlp'" in response.json()["error"]
    assert_still_serving(server)


def test_unknown_model_is_not_ready(servers):
    response = servers["mlp"].client.get("/v2/models/nope/ready")
    assert response.status_code == 404
    assert "error" in response.json()


def test_oversized_body_is_413(servers):
    server = servers["mlp"]  # started with --max-body-bytes 1048576
    big = infer_json() + b" " * (2 * 1024 * 1024)
    response = server.client.post("/v2/models/mlp/infer", content=big)
    assert response.status_code == 413
    assert "at most 1048576" in response.json()["error"]

    def chunks():  # no Content-Length: the limit holds while the body streams in
        for _ in range(40):
            yield b" " * 65536

    response = server.client.post("/v2/models/mlp/infer", content=chunks())
    assert response.status_code == 413
    assert_still_serving(server)


def test_gzip_bodies_are_accepted_but_not_gzip_bombs(servers):
    server = servers["mlp"]  # started with --max-body-bytes 1048576
    body = infer_json()
    padded = body[:-1] + b" " * 900_000 + b"}"  # 900 kB decompressed: finished on a thread, off the event loop
    halves = gzip.compress(body[:100]) + gzip.compress(body[100:])  # what `cat a.gz b.gz` makes
    for content, encoding in (
        (gzip.compress(body), "gzip"),
        (gzip.compress(body), "x-gzip"),  # RFC 9110: the same as gzip
        (zlib.compress(body), "deflate"),
        (halves, "gzip"),
        (gzip.compress(padded), "gzip"),
    ):
        response = server.client.post("/v2/models/mlp/infer", content=content, headers={"Content-Encoding": encoding})
        assert response.status_code == 200, (encoding, response.text)
    bomb = gzip.compress(b" " * (8 * 1024 * 1024))
    response = server.client.post("/v2/models/mlp/infer", content=bomb, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert "decompresses to more than 1048576 bytes" in response.json()["error"]
    assert_still_serving(server)


def test_a_list_of_content_codings_is_undone_last_first_and_an_unknown_one_is_415(servers):
    """RFC 9110 §8.4: Content-Encoding lists the codings in the order they were applied, in one field or in
    several; identity is none. §15.5.16: a coding the server cannot undo is a 415 with Accept-Encoding."""
    server = servers["mlp"]
    body = infer_json()
    twice = gzip.compress(zlib.compress(body))  # deflate first, then gzip
    for content, headers in (
        (gzip.compress(body), {"Content-Encoding": "gzip, identity"}),
        (gzip.compress(body), {"Content-Encoding": "identity,GZIP"}),
        (gzip.compress(body), {"Content-Encoding": ", gzip ,"}),  # empty elements are ignored
        (twice, {"Content-Encoding": "deflate, gzip"}),
        (twice, [("Content-Encoding", "deflate"), ("Content-Encoding", "gzip")]),
        (body, {"Content-Encoding": "identity"}),
    ):
        response = server.client.post("/v2/models/mlp/infer", content=content, headers=headers)
        assert response.status_code == 200, (headers, response.text)

    wrong_order = server.client.post(
        "/v2/models/mlp/infer", content=twice, headers={"Content-Encoding": "gzip, deflate"}
    )
    assert wrong_order.status_code == 400
    assert "not valid deflate data" in wrong_order.json()["error"]

    for encoding in ("br", "gzip, br", "zstd, gzip", "compress"):
        response = server.client.post(
            "/v2/models/mlp/infer", content=gzip.compress(body), headers={"Content-Encoding": encoding}
        )
        assert response.status_code == 415, (encoding, response.text)
        assert response.headers["accept-encoding"] == "gzip, deflate"
        assert (
            "is not supported: send the body uncompressed, or compressed with gzip (x-gzip) or deflate"
            in (response.json()["error"])
        )

    many = server.client.post(
        "/v2/models/mlp/infer", content=body, headers={"Content-Encoding": ", ".join(["gzip"] * 5)}
    )
    assert many.status_code == 400
    assert "more than 4 codings" in many.json()["error"]
    assert_still_serving(server)


def test_codings_past_the_event_loop_s_budget_are_undone_on_a_thread_in_the_same_order():
    inner = b"\0" * 3_000_000 + np.random.default_rng(4).bytes(300_000)  # past the loop's 256 KiB of work
    body = zlib.compress(gzip.compress(inner))  # gzip, then deflate
    assert asyncio.run(decode_body(body, ["gzip", "deflate"], 64 * 1024 * 1024)) == inner
    with pytest.raises(PayloadTooLarge):
        asyncio.run(decode_body(body, ["gzip", "deflate"], 3_000_000))  # each coding is held to the limit


def test_a_body_is_decompressed_the_same_in_steps_and_the_event_loop_takes_only_the_first():
    """The server decompresses a body on the event loop up to a budget, and the rest on a thread."""
    rng = np.random.default_rng(3)
    members = [rng.bytes(150_000), b"\0" * 1_000_000, b"", b'{"inputs": []}']
    body = b"".join(gzip.compress(member) for member in members)
    for budget in (100, 65_537, 300_000):
        inflate = Inflate(body, "gzip", 64 * 1024 * 1024)
        steps = 0
        while (result := inflate.run(budget)) is None:
            assert inflate.size <= budget * (steps + 1)
            steps += 1
        assert result == b"".join(members)
        assert steps >= 1_150_000 // (2 * budget)
    bomb = gzip.compress(b" " * (8 * 1024 * 1024))  # 8 kB
    inflate = Inflate(bomb, "gzip", 1024 * 1024)
    assert inflate.run(256 * 1024) is None and inflate.size <= 256 * 1024
    with pytest.raises(PayloadTooLarge):
        inflate.run()


def test_unknown_endpoints_and_methods_answer_json(servers):
    client = servers["mlp"].client
    response = client.get("/v3/nothing")
    assert response.status_code == 404
    assert "no such endpoint" in response.json()["error"]
    response = client.get("/v2/models/mlp/infer")
    assert response.status_code == 405
    assert "error" in response.json()


def test_health_metadata_and_metrics_answer_head_as_they_answer_get(servers):
    """Load balancers and uptime checks often probe with HEAD: the same status and headers, no body."""
    client = servers["mlp"].client
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/mlp", "/v2/models/mlp/ready", "/metrics"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"], path
    assert client.head("/v2/models/nope/ready").status_code == client.get("/v2/models/nope/ready").status_code == 404


def test_bad_requests_are_counted_by_outcome(servers):
    server = servers["mlp"]
    before = server.metric("slipway_inference_requests_total", outcome="bad_request")
    server.client.post("/v2/models/mlp/infer", content=b"{")
    after = server.metric("slipway_inference_requests_total", outcome="bad_request")
    assert after == before + 1


def test_a_header_length_with_a_space_after_it_is_read(servers):
    body, headers = binary_request({"x": X})
    headers["Inference-Header-Content-Length"] += " "  # httpx would strip it; http.client sends it as it is
    connection = http.client.HTTPConnection("127.0.0.1", servers["mlp"].port, timeout=30)
    try:
        connection.request("POST", "/v2/models/mlp/infer", body=body, headers=headers)
        response = connection.getresponse()
        assert response.status == 200, response.read()
    finally:
        connection.close()


def test_an_exported_program_s_ranges_are_checked_before_it_runs(servers):
    """torch.export programs guard the sizes they were exported for: outside them is the client's 400."""
    server = servers["sequence"]  # exported for 1 to 512 tokens
    tokens = np.zeros((1, 600), dtype=np.int64)
    response = server.client.post("/v2/models/sequence/infer", content=json_request({"tokens": tokens}))
    assert response.status_code == 400, response.text
    assert "has 600 in dimension 1; the model takes 1 to 512 there" in response.json()["error"]
    assert server.metric("slipway_inference_requests_total", outcome="error") == 0


def test_batches_stay_within_what_the_program_was_exported_for(spawn, zoo):
    """Exported for at most 4 rows and served with --max-batch-size 16: no batch may stack more than 4,
    and no request may bring more (its guards would refuse them, and every batch would run again row by row)."""
    entry = zoo["mlp_pt2_4"]
    server = spawn("mlp4", entry.path, "--max-batch-size", "16", "--max-delay-ms", "20").wait_ready()
    five = server.client.post("/v2/models/mlp4/infer", content=json_request({"x": np.zeros((5, 16), np.float32)}))
    assert five.status_code == 400 and "has 5 in dimension 0; the model takes 1 to 4 there" in five.json()["error"]

    rows = [np.full((1, 16), i, dtype=np.float32) for i in range(24)]

    async def clients():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(
                *(client.post("/v2/models/mlp4/infer", content=json_request({"x": x})) for x in rows)
            )

    for x, response in zip(rows, asyncio.run(clients()), strict=True):
        got = parse_response(response)["output__0"]
        np.testing.assert_allclose(got, expected_outputs(entry.module, {"x": x})["output__0"], rtol=1e-5, atol=1e-6)
    passes = server.metric("slipway_inference_batch_size_count")
    assert server.metric("slipway_inference_batch_size_bucket", le="4.0") == passes
    assert passes < 24, "no batch was formed"
    assert "running them one by one" not in server.log()


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        (["{n}", "{n}"], 200),  # the same value twice: one length, nothing to misread
        (["{n}, {n}"], 200),  # the same, as a proxy may combine them into one field
        (["{n}", "{m}"], 400),
        (["{m}", "{n}"], 400),  # the last one does not win either
        (["{n}, {m}"], 400),
    ],
)
def test_a_header_length_given_twice_must_be_the_same(servers, fields, status):
    body, headers = binary_request({"x": X})
    n = int(headers.pop("Inference-Header-Content-Length"))
    values = [f.format(n=n, m=n + 4) for f in fields]
    fields = [("Inference-Header-Content-Length", value) for value in values]
    response = servers["mlp"].client.post("/v2/models/mlp/infer", content=body, headers=[*headers.items(), *fields])
    assert response.status_code == status, response.text
    if status == 400:
        error = response.json()["error"]
        first, second = ", ".join(values).split(", ")
        assert f"Inference-Header-Content-Length is given more than once, as {first} and {second}:" in error
    assert_still_serving(servers["mlp"])
