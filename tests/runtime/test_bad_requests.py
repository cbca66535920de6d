"""Each bad request gets the right 4xx and a JSON error, and the server stays ready."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.runtime.oip import binary_request, json_request

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
    "an unknown content encoding": (infer_json(), {"Content-Encoding": "br"}, 501, "not supported"),
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
    import gzip

    server = servers["mlp"]
    response = server.client.post(
        "/v2/models/mlp/infer", content=gzip.compress(infer_json()), headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 200, response.text
    bomb = gzip.compress(b" " * (8 * 1024 * 1024))
    response = server.client.post("/v2/models/mlp/infer", content=bomb, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413


def test_unknown_endpoints_and_methods_answer_json(servers):
    client = servers["mlp"].client
    response = client.get("/v3/nothing")
    assert response.status_code == 404
    assert "no such endpoint" in response.json()["error"]
    response = client.get("/v2/models/mlp/infer")
    assert response.status_code == 405
    assert "error" in response.json()


def test_bad_requests_are_counted_by_outcome(servers):
    server = servers["mlp"]
    before = server.metric("slipway_inference_requests_total", outcome="bad_request")
    server.client.post("/v2/models/mlp/infer", content=b"{")
    after = server.metric("slipway_inference_requests_total", outcome="bad_request")
    assert after == before + 1
