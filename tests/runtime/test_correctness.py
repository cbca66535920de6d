"""Outputs through a real runtime process equal a direct model(x), in JSON and binary."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import np_to_triton_dtype

from tests.runtime.oip import (
    BF16,
    DATATYPE,
    assert_outputs_equal,
    binary_request,
    expected_outputs,
    json_request,
    parse_response,
)

pytestmark = pytest.mark.runtime

rng = np.random.default_rng(7)


def sample_inputs(model: str, rows: int) -> dict:
    if model in ("mlp", "mlp_pt2"):
        return {"x": rng.standard_normal((rows, 16)).astype(np.float32)}
    if model == "cnn":
        return {"image": rng.standard_normal((rows, 1, 8, 8)).astype(np.float32)}
    if model == "two_inputs":
        return {"features": rng.standard_normal((rows, 3)), "mask": rng.random((rows, 3)) > 0.5}
    if model == "sequence":
        return {"tokens": rng.integers(0, 50, size=(rows, 7), dtype=np.int64)}
    if model == "datatypes":
        return {
            "u8": rng.integers(0, 100, (rows, 3), dtype=np.uint8),
            "i8": rng.integers(-60, 60, (rows, 3), dtype=np.int8),
            "i16": rng.integers(-9000, 9000, (rows, 3), dtype=np.int16),
            "i32": rng.integers(-(2**30), 2**30, (rows, 3), dtype=np.int32),
            "f16": (rng.integers(-512, 512, (rows, 3)) / 8).astype(np.float16),
            "bf16": BF16(rng.integers(-64, 64, (rows, 3)) / 4),  # exact in bfloat16
            "flag": rng.random((rows, 3)) > 0.5,
        }
    raise AssertionError(model)


MODELS = ["mlp", "mlp_pt2", "cnn", "two_inputs", "sequence", "datatypes"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("rows", [1, 3])
def test_json_outputs_equal_the_model_called_directly(servers, zoo, model, rows):
    server = servers[model]
    inputs = sample_inputs(model, rows)
    response = server.client.post(f"/v2/models/{model}/infer", content=json_request(inputs, id="req-1"))
    assert response.headers["content-type"] == "application/json"
    assert response.json()["id"] == "req-1"
    assert response.json()["model_name"] == model
    assert_outputs_equal(parse_response(response), expected_outputs(zoo[model].module, inputs))


@pytest.mark.parametrize("model", MODELS)
def test_binary_outputs_equal_the_model_called_directly(servers, zoo, model):
    server = servers[model]
    inputs = sample_inputs(model, 2)
    body, headers = binary_request(inputs)
    response = server.client.post(f"/v2/models/{model}/versions/1/infer", content=body, headers=headers)
    assert response.headers["content-type"] == "application/octet-stream"
    assert_outputs_equal(parse_response(response), expected_outputs(zoo[model].module, inputs))


@pytest.mark.parametrize("path", ["/v2/models/mlp/infer/", "/v2/models/mlp/versions/1/infer/"])
def test_an_infer_url_with_a_trailing_slash_is_answered_not_redirected(servers, zoo, path):
    """A 307 would fail every client that does not follow redirects for POST (httpx, curl without -L)."""
    inputs = sample_inputs("mlp", 2)
    response = servers["mlp"].client.post(path, content=json_request(inputs))
    assert response.status_code == 200, response.text
    assert_outputs_equal(parse_response(response), expected_outputs(zoo["mlp"].module, inputs))


def test_binary_inputs_can_ask_for_json_outputs(servers, zoo):
    inputs = sample_inputs("two_inputs", 2)
    body, headers = binary_request(inputs, binary_output=False)
    response = servers["two_inputs"].client.post("/v2/models/two_inputs/infer", content=body, headers=headers)
    assert "inference-header-content-length" not in response.headers
    assert_outputs_equal(parse_response(response), expected_outputs(zoo["two_inputs"].module, inputs))


def test_requested_outputs_are_the_only_ones_returned_each_in_its_own_format(servers, zoo):
    inputs = sample_inputs("sequence", 2)
    request = json_request(inputs, outputs=[{"name": "pooled", "parameters": {"binary_data": True}}])
    response = servers["sequence"].client.post("/v2/models/sequence/infer", content=request)
    got = parse_response(response)
    want = expected_outputs(zoo["sequence"].module, inputs)
    assert list(got) == ["pooled"]
    np.testing.assert_allclose(got["pooled"], want["pooled"], rtol=1e-5, atol=1e-6)


def test_nested_json_data_is_accepted(servers, zoo):
    x = sample_inputs("mlp", 2)["x"]
    body = {"inputs": [{"name": "x", "shape": [2, 16], "datatype": "FP32", "data": x.tolist()}]}
    response = servers["mlp"].client.post("/v2/models/mlp/infer", json=body)
    assert_outputs_equal(parse_response(response), expected_outputs(zoo["mlp"].module, {"x": x}))


@pytest.mark.parametrize("model", ["mlp", "datatypes"])
def test_tritonclient_speaks_the_binary_extension(servers, zoo, model):
    server = servers[model]
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(model)
        metadata = client.get_model_metadata(model)
        assert [i["name"] for i in metadata["inputs"]] == [s["name"] for s in zoo[model].signature["inputs"]]

        inputs = sample_inputs(model, 3)
        tensors = []
        for name, value in inputs.items():
            # tritonclient takes BF16 as ml_dtypes.bfloat16 (its own dependency)
            array = value.values.astype(ml_dtypes.bfloat16) if isinstance(value, BF16) else value
            tensor = triton.InferInput(name, list(array.shape), triton_datatype(array))
            tensor.set_data_from_numpy(array, binary_data=True)
            tensors.append(tensor)
        want = expected_outputs(zoo[model].module, inputs)

        # No outputs named: the client asks for every output in binary.
        result = client.infer(model, tensors, request_id="t-1")
        assert result.get_response()["id"] == "t-1"
        assert_outputs_equal({name: as_numpy(result, name) for name in want}, want)

        # Outputs named, one in JSON and the others in binary.
        names = list(want)
        outputs = [triton.InferRequestedOutput(name, binary_data=i != 0) for i, name in enumerate(names)]
        result = client.infer(model, tensors, outputs=outputs, model_version="1")
        assert_outputs_equal({name: as_numpy(result, name) for name in names}, want)
    finally:
        client.close()


def triton_datatype(array: np.ndarray) -> str:
    return "BF16" if array.dtype == ml_dtypes.bfloat16 else np_to_triton_dtype(array.dtype)


def as_numpy(result, name: str) -> np.ndarray:
    array = result.as_numpy(name)
    return array.astype(np.float32) if array.dtype == ml_dtypes.bfloat16 else array


def test_model_metadata_reports_the_real_signature(servers):
    mlp = servers["mlp"].client.get("/v2/models/mlp").json()
    assert mlp == {
        "name": "mlp",
        "versions": ["1"],
        "platform": "pytorch_torchscript",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}],
        "outputs": [{"name": "output__0", "datatype": "FP32", "shape": [-1, 4]}],
    }
    sequence = servers["sequence"].client.get("/v2/models/sequence/versions/1").json()
    assert sequence["platform"] == "pytorch_torch_export"
    assert sequence["inputs"] == [{"name": "tokens", "datatype": "INT64", "shape": [-1, -1]}]
    assert sequence["outputs"] == [
        {"name": "hidden", "datatype": "FP32", "shape": [-1, -1, 8]},
        {"name": "pooled", "datatype": "FP32", "shape": [-1, 5]},
    ]
    two = servers["two_inputs"].client.get("/v2/models/two_inputs").json()
    assert two["outputs"] == [
        {"name": "output__0", "datatype": "FP64", "shape": [-1, 2]},
        {"name": "output__1", "datatype": "INT64", "shape": [-1]},
    ]


def test_reduced_precision_computes_in_bfloat16_and_answers_fp32(servers, zoo):
    inputs = sample_inputs("mlp", 4)
    response = servers["mlp_bf16"].client.post("/v2/models/mlp_bf16/infer", content=json_request(inputs))
    assert response.json()["outputs"][0]["datatype"] == "FP32"
    got = parse_response(response)["output__0"]
    want = expected_outputs(zoo["mlp"].module, inputs)["output__0"]
    np.testing.assert_allclose(got, want, rtol=0.05, atol=0.05)
    assert not np.allclose(got, want, rtol=1e-6, atol=1e-7), "not computed in bfloat16"


def test_reduced_precision_leaves_what_the_model_takes_in_another_float_datatype_alone(spawn, zoo):
    """--dtype float16 computes the model's FP32 in half precision; an input (and a weight) it keeps in FP64
    or BF16 keeps its precision: in FP16, 1e6 or 2**40 would be infinite (FP16 stops at 65504). An output it
    makes in FP16 itself is answered as FP16, as without --dtype."""
    two = spawn("two_inputs", zoo["two_inputs"].path, "--dtype", "float16", entry=zoo["two_inputs"])
    types = spawn("datatypes", zoo["datatypes"].path, "--dtype", "float16", entry=zoo["datatypes"])
    two.wait_ready(), types.wait_ready()

    inputs = {
        "features": np.array([[1e6, 1.0000001, 70_000.0], [0.1, 0.2, 0.3]]),  # FP64
        "mask": np.array([[True, True, True], [True, False, True]]),
    }
    response = two.client.post("/v2/models/two_inputs/infer", content=json_request(inputs))
    assert response.json()["outputs"][0]["datatype"] == "FP64"
    assert_outputs_equal(parse_response(response), expected_outputs(zoo["two_inputs"].module, inputs))
    outputs = two.client.get("/v2/models/two_inputs").json()["outputs"]
    assert [output["datatype"] for output in outputs] == ["FP64", "INT64"]

    inputs = sample_inputs("datatypes", 2)
    inputs["bf16"] = BF16(np.array([[2.0**40, -(2.0**100), 1.5], [-3.0, 2.0**-30, 0.0]]))
    for body, headers in (binary_request(inputs), (json_request(inputs), {})):
        response = types.client.post("/v2/models/datatypes/infer", content=body, headers=headers)
        got = parse_response(response)
        assert np.isfinite(got["output__5"]).all()
        assert_outputs_equal(got, expected_outputs(zoo["datatypes"].module, inputs))
    # Each output in the datatype the model gives it, as without --dtype: its own FP16 stays FP16.
    want = ["UINT8", "INT8", "INT16", "INT32", "FP16", "BF16", "BOOL"]
    assert [output["datatype"] for output in response.json()["outputs"]] == want
    assert [output["datatype"] for output in types.client.get("/v2/models/datatypes").json()["outputs"]] == want


def test_a_torchscript_model_without_a_signature_is_served_unbatched(servers, zoo):
    server = servers["mlp_unsigned"]
    metadata = server.client.get("/v2/models/mlp_unsigned").json()
    assert [spec["name"] for spec in metadata["inputs"]] == ["x"]
    for _ in range(2):  # the first request teaches the runtime its outputs
        inputs = sample_inputs("mlp", 2)
        body, headers = binary_request(inputs)
        response = server.client.post("/v2/models/mlp_unsigned/infer", content=body, headers=headers)
        assert_outputs_equal(parse_response(response), expected_outputs(zoo["mlp"].module, inputs))
    assert server.client.get("/v2/models/mlp_unsigned").json()["outputs"][0]["datatype"] == "FP32"
    bad = json_request({"x": np.zeros((1, 5), dtype=np.float32)})
    response = server.client.post("/v2/models/mlp_unsigned/infer", content=bad)
    assert response.status_code == 500  # unchecked: the model itself refuses it
    error = response.json()["error"]
    # The error TorchScript wraps, its type said once
    assert error.startswith("inference failed: RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x5 and 16x32)")
    assert server.client.get("/v2/health/ready").status_code == 200


def test_a_model_without_a_signature_answers_each_request_in_its_own_datatypes(spawn, zoo):
    """The outputs' datatypes are what each forward pass returned, not what the first request did."""
    server = spawn("echo", zoo["echo"].path).wait_ready()
    sent = [
        np.array([[1.5, 2.5]], dtype=np.float32),
        np.array([1, -2, 2**40], dtype=np.int64),
        BF16(np.array([1.5, 3.0, -0.25])),
        np.array([[True, False, True]]),
        np.array([7, 8], dtype=np.uint8),
        np.array([0.5, 1.5], dtype=np.float16),
    ]
    for value in sent:
        datatype = "BF16" if isinstance(value, BF16) else DATATYPE[value.dtype]
        want = value.values if isinstance(value, BF16) else value
        for body, headers in (binary_request({"x": value}), (json_request({"x": value}), {})):
            response = server.client.post("/v2/models/echo/infer", content=body, headers=headers)
            got = parse_response(response)["output__0"]  # read as the answer's datatype says
            assert got.dtype == want.dtype and got.shape == want.shape, datatype
            np.testing.assert_array_equal(got, want)
        assert response.json()["outputs"][0]["datatype"] == datatype

    refused = server.client.post(
        "/v2/models/echo/infer",
        content=b'{"inputs": [{"name": "x", "datatype": ["FP32"], "shape": [1], "data": [1]}]}',
    )
    assert refused.status_code == 400
    assert "'datatype' that is a list: send a string, one of BOOL, UINT8" in refused.json()["error"]
    # BYTES is the protocol's, not this server's: 501 (unsupported), where a model that declares FP32 says 400
    refused = server.client.post(
        "/v2/models/echo/infer",
        content=b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]}',
    )
    assert refused.status_code == 501 and "BYTES, which this server does not support" in refused.json()["error"]
    assert server.client.get("/v2/health/ready").status_code == 200


def nonfinite_inputs() -> dict:
    """The datatypes model's inputs, its float ones NaN, Infinity and -Infinity (it doubles them: the same)."""
    inputs = sample_inputs("datatypes", 2)
    values = np.array([[np.nan, np.inf, -np.inf], [1.5, -np.inf, np.nan]])
    inputs["f16"], inputs["bf16"] = values.astype(np.float16), BF16(values)
    return inputs


def test_nan_and_infinity_come_back_as_nan_and_infinity_in_json(servers, zoo):
    """Not as null (orjson's way), which clients read as nan, or not at all; and JSON requests may send them
    (Python's json.dumps, and Triton's clients with binary_data=False, write NaN and Infinity)."""
    server, inputs = servers["datatypes"], nonfinite_inputs()
    want = expected_outputs(zoo["datatypes"].module, inputs)
    for body, headers in (binary_request(inputs, binary_output=False), (json_request(inputs), {})):
        assert headers or (b"NaN" in body and b"-Infinity" in body)  # the JSON request carries them
        response = server.client.post("/v2/models/datatypes/infer", content=body, headers=headers)
        assert b"null" not in response.content and b"-Infinity" in response.content, response.text
        got = parse_response(response)
        assert_outputs_equal(got, want)
        assert np.isinf(got["output__4"]).sum() == 3 and np.isinf(got["output__5"]).sum() == 3


def test_tritonclient_sends_and_reads_nan_and_infinity_in_json(servers, zoo):
    inputs = nonfinite_inputs()
    client = triton.InferenceServerClient(url=f"127.0.0.1:{servers['datatypes'].port}")
    try:
        tensors = []
        for name, value in inputs.items():
            array = value.values.astype(ml_dtypes.bfloat16) if isinstance(value, BF16) else value
            tensor = triton.InferInput(name, list(array.shape), triton_datatype(array))
            tensor.set_data_from_numpy(array, binary_data=name == "bf16")  # it sends BF16 in binary only
            tensors.append(tensor)
        want = expected_outputs(zoo["datatypes"].module, inputs)
        outputs = [triton.InferRequestedOutput(name, binary_data=name == "output__5") for name in want]
        result = client.infer("datatypes", tensors, outputs=outputs)
        assert_outputs_equal({name: as_numpy(result, name) for name in want}, want)
    finally:
        client.close()


def test_binary_bools_are_bools_whatever_the_byte(servers, zoo):
    """A byte other than 0 or 1 in a BOOL tensor is true, as numpy and torch read it, not a 2 or a 255."""
    features = np.ones((1, 3))
    body = {
        "inputs": [
            {"name": "features", "shape": [1, 3], "datatype": "FP64", "parameters": {"binary_data_size": 24}},
            {"name": "mask", "shape": [1, 3], "datatype": "BOOL", "parameters": {"binary_data_size": 3}},
        ]
    }
    header = orjson.dumps(body)
    response = servers["two_inputs"].client.post(
        "/v2/models/two_inputs/infer",
        content=header + features.tobytes() + bytes([2, 255, 0]),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    want = expected_outputs(zoo["two_inputs"].module, {"features": features, "mask": np.array([[True, True, False]])})
    assert_outputs_equal(parse_response(response), want)


def test_tritonclients_classification_request_is_refused_not_answered_with_raw_values(servers, zoo):
    """class_count asks Triton's top-k extension for labels; raw logits under the same name would pass for them."""
    x = sample_inputs("mlp", 1)["x"]
    client = triton.InferenceServerClient(url=f"127.0.0.1:{servers['mlp'].port}")
    try:
        tensor = triton.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=False)
        output = triton.InferRequestedOutput("output__0", binary_data=False, class_count=3)
        with pytest.raises(triton.InferenceServerException) as refused:
            client.infer("mlp", [tensor], outputs=[output])
        assert refused.value.status() == "501"
        assert "output 'output__0' asks for classification (the top 3 classes)" in refused.value.message()
        assert client.is_server_ready()
    finally:
        client.close()
