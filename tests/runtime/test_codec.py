"""The wire format, in-process: every datatype in JSON and binary, and the checks on it."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
import torch

from inference_runtime import datatypes
from inference_runtime.codec import decode_request, encode_response
from inference_runtime.errors import InvalidInput
from inference_runtime.model import Outputs, TensorSpec

pytestmark = pytest.mark.runtime

NAN, INF = float("nan"), float("inf")
ALL = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]


class FakeModel:
    """What the codec reads from a loaded model."""

    def __init__(self, datatype: str, outputs: list[TensorSpec] | None = None):
        self.inputs = [TensorSpec("x", datatype, (-1, 2))]
        self.input_index = {"x": 0}
        self.batchable = True
        self.outputs = outputs or [TensorSpec("y", datatype, (-1, 2))]
        self.output_index = {spec.name: i for i, spec in enumerate(self.outputs)}
        self.bounds = None
        self.max_request_rows = 16


def values_for(datatype: str) -> np.ndarray:
    if datatype == "BOOL":
        return np.array([[True, False], [False, True]])
    dtype = np.dtype({"FP16": "f2", "FP32": "f4", "FP64": "f8"}.get(datatype, datatype.lower()))
    if dtype.kind == "f":
        return np.array([[0.5, -1.25], [3.0, 1e-3]], dtype=dtype)
    info = np.iinfo(dtype)
    return np.array([[info.min, info.max], [0, 1]], dtype=dtype)


@pytest.mark.parametrize("datatype", ALL)
def test_every_datatype_decodes_from_json_and_binary_alike(datatype):
    values = values_for(datatype)
    model = FakeModel(datatype)
    as_json = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": datatype, "data": values.reshape(-1).tolist()}]}
    from_json = decode_request(json.dumps(as_json).encode(), None, model).arrays[0]
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 2],
                    "datatype": datatype,
                    "parameters": {"binary_data_size": 4 * values.itemsize},
                }
            ]
        }
    )
    from_binary = decode_request(header + values.tobytes(), len(header), model).arrays[0]
    assert from_json.dtype == from_binary.dtype == values.dtype
    np.testing.assert_array_equal(from_json, values)
    np.testing.assert_array_equal(from_binary, values)


@pytest.mark.parametrize("datatype", ALL)
def test_every_datatype_encodes_to_json_and_binary_alike(datatype):
    values = values_for(datatype)
    model = FakeModel(datatype)
    request = decode_request(
        orjson.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": datatype, "data": values.tolist()}]}),
        None,
        model,
    )
    _, body = encode_response(request, Outputs([values], model.outputs), "m", "1")
    output = orjson.loads(body)["outputs"][0]
    assert output["shape"] == [2, 2]
    np.testing.assert_array_equal(np.asarray(output["data"], dtype=values.dtype).reshape(2, 2), values)

    request.binary_default = True
    headers, body = encode_response(request, Outputs([values], model.outputs), "m", "1")
    length = int(dict(headers)[b"inference-header-content-length"])
    assert body[length:] == values.tobytes()


def test_bf16_is_sent_as_floats_in_json_and_raw_bits_in_binary():
    model = FakeModel("BF16")
    floats = [0.5, -1.25, 3.0, 1.0 / 3]
    request = decode_request(
        orjson.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "BF16", "data": floats}]}), None, model
    )
    bits = request.arrays[0]
    expected = torch.tensor(floats).to(torch.bfloat16)
    assert bits.tobytes() == expected.view(torch.int16).numpy().tobytes()

    _, body = encode_response(request, Outputs([bits], model.outputs), "m", "1")
    sent = np.asarray(orjson.loads(body)["outputs"][0]["data"], dtype=np.float32)
    np.testing.assert_array_equal(sent, expected.float().numpy())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1.5, 2, 3, 4], "holds numbers written with a fraction or exponent"),
        ([True, False, True, False], "holds booleans"),
        ([300, 0, 0, 0], "out of range for INT8"),
        ([[1, 2], [3]], "ragged"),
        ([1, 2, 3], "4 elements"),
    ],
)
def test_integer_inputs_refuse_what_would_be_silently_mangled(data, message):
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT8", "data": data}]})
    with pytest.raises(InvalidInput, match=message):
        decode_request(body, None, FakeModel("INT8"))


def two_input_model() -> FakeModel:
    model = FakeModel("FP32")
    model.inputs.append(TensorSpec("z", "FP32", (-1, 2)))
    model.input_index["z"] = 1
    return model


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("2,2", "needs a shape"),
        ([], "needs a shape"),
        ([2, True], "needs a shape"),
        ([2, 2.0], "needs a shape"),
        ([2, -1], "needs a shape"),
        ([2, 3], r"has shape \[2, 3\]; the model takes \[-1, 2\]"),
        ([1, 2, 2], r"has shape \[1, 2, 2\]"),
    ],
)
def test_a_shape_must_be_positive_integers_that_fit_the_model(shape, message):
    body = orjson.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": [0.0] * 4}]})
    with pytest.raises(InvalidInput, match=message):
        decode_request(body, None, FakeModel("FP32"))


def test_every_input_is_given_once():
    x = {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [0.0, 1.0]}
    with pytest.raises(InvalidInput, match=r"missing input\(s\): z \(FP32 \[-1, 2\]\)"):
        decode_request(orjson.dumps({"inputs": [x]}), None, two_input_model())
    with pytest.raises(InvalidInput, match="'x' is given twice"):
        decode_request(orjson.dumps({"inputs": [x, x]}), None, two_input_model())
    request = decode_request(orjson.dumps({"inputs": [{**x, "name": "z"}, x]}), None, two_input_model())
    assert [array.tolist() for array in request.arrays] == [[[0.0, 1.0]], [[0.0, 1.0]]]  # the model's order


def test_inputs_of_one_request_must_share_their_first_dimension():
    model = two_input_model()
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [0.0] * 4},
                {"name": "z", "shape": [1, 2], "datatype": "FP32", "data": [0.0] * 2},
            ]
        }
    )
    with pytest.raises(InvalidInput, match="same first"):
        decode_request(body, None, model)


def test_binary_data_must_be_used_exactly():
    model = FakeModel("FP32")
    header = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}
    )
    with pytest.raises(InvalidInput, match="add up to 8"):
        decode_request(header + b"\0" * 12, len(header), model)
    with pytest.raises(InvalidInput, match="only 4 follow"):
        decode_request(header + b"\0" * 4, len(header), model)


def test_nan_and_infinity_travel_as_json_tokens_both_ways():
    """As Python's json module and Triton's clients write and read them; orjson alone writes null for all three."""
    model = FakeModel("FP32")
    sent = json.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [0.5, NAN, INF, -INF]}]})
    request = decode_request(sent.encode(), None, model)
    np.testing.assert_array_equal(request.arrays[0], np.array([[0.5, NAN], [INF, -INF]], dtype=np.float32))
    for datatype, dtype in (("FP16", np.float16), ("FP32", np.float32), ("FP64", np.float64)):
        values = request.arrays[0].astype(dtype)
        _, body = encode_response(request, Outputs([values], [TensorSpec("y", datatype, (-1, 2))]), "m", "1")
        assert b'"data":[0.5,NaN,Infinity,-Infinity]' in body
        np.testing.assert_array_equal(json.loads(body)["outputs"][0]["data"], [0.5, NAN, INF, -INF])


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # the runtime's own filter, in the server
def test_infinity_sent_as_such_is_kept_but_a_number_too_large_is_still_refused():
    model = FakeModel("FP32")
    for datatype in ("FP32", "BF16"):
        model.inputs[0] = TensorSpec("x", datatype, (-1, 2))
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": datatype, "data": [INF, NAN]}]})
        assert decode_request(body.encode(), None, model).arrays[0].shape == (1, 2)
        for data in ([INF, 1e39], [NAN, 1e39]):
            body = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": datatype, "data": data}]})
            with pytest.raises(InvalidInput, match=f"out of range for {datatype}"):
                decode_request(body.encode(), None, model)
    with pytest.raises(InvalidInput, match="not valid JSON"):
        decode_request(b'{"inputs": [NaN', None, model)
    # What orjson refuses stays refused when a NaN elsewhere sends the body to the other parser: a number
    # past any float (it would have become Infinity, as if sent so), and a lone surrogate (the answer
    # echoes the id, and writing it would fail: a 500).
    model.inputs[0] = TensorSpec("x", "FP64", (-1, 2))
    for body in (
        b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [NaN, 1e400]}]}',
        b'{"id": "\\ud800", "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [NaN, 1]}]}',
    ):
        with pytest.raises(InvalidInput, match="not valid JSON"):
            decode_request(body, None, model)


@pytest.mark.parametrize("datatype", [d for d in ALL if d != "BOOL"] + ["BF16"])
@pytest.mark.parametrize("data", [[1, True, 2, 3], [[0, 1], [False, 3]], [1.5, 2.5, True, 0.5]])
def test_a_boolean_among_numbers_is_refused_not_read_as_one_or_zero(datatype, data):
    if datatype not in datatypes.FLOATING and any(type(v) is float for v in data):
        data = [0 if type(v) is float else v for v in data]
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": datatype, "data": data}]})
    with pytest.raises(InvalidInput, match=f"input 'x' is {datatype}, but its data holds booleans among numbers"):
        decode_request(body, None, FakeModel(datatype))


def test_booleans_elsewhere_in_the_request_leave_numbers_alone():
    body = orjson.dumps(
        {
            "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 0, 1.0, 0.0]}],
            "parameters": {"binary_data_output": True},
            "outputs": [{"name": "y", "parameters": {"binary_data": False}}],
        }
    )
    np.testing.assert_array_equal(decode_request(body, None, FakeModel("FP32")).arrays[0], [[1, 0], [1, 0]])


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("BOOL", [1, 0, 1, 0], "is BOOL, but its data holds integers"),
        ("BOOL", [True, 1, False, 0], "is BOOL, but its data holds integers"),
        ("INT32", [1.0, 2.0, 3.0, 4.0], "is INT32, but its data holds numbers written with a fraction or exponent"),
        ("UINT64", [1, True, 2, 3], "is UINT64, but its data holds booleans among numbers"),
        ("FP32", [True, False, True, False], "is FP32, but its data holds booleans"),
    ],
)
def test_every_datatype_takes_only_its_own_json_values(datatype, data, message):
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": datatype, "data": data}]})
    with pytest.raises(InvalidInput, match=message):
        decode_request(body, None, FakeModel(datatype))


def test_a_boolean_among_numbers_is_refused_in_a_request_with_binary_inputs_too():
    model = two_input_model()
    raw = np.zeros(4, np.float32).tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}},
                {"name": "z", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, False]},
            ]
        }
    )
    with pytest.raises(InvalidInput, match="input 'z' is FP32, but its data holds booleans among numbers"):
        decode_request(header + raw, len(header), model)


@pytest.mark.parametrize(
    ("header", "may"),
    [
        (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.5, 2]}]}', False),
        (b'{"inputs": [], "parameters": {"binary_data_output": true}, "id": "true, false"}', True),
        (b'{"parameters": {"binary_data_output": true}, "outputs": [{"parameters": {"binary_data": false}}]}', False),
        (b'{"data": [1,true]}', True),
        (b'{"data": [\n\tfalse]}', True),
        (b'{"data": [1 , \r\n true]}', True),
        (b'{"id": "isfalse", "data": [1e5]}', False),
    ],
)
def test_the_search_for_booleans_in_lists_finds_every_one(header, may):
    from inference_runtime.codec import _may_hold_bools

    assert _may_hold_bools(header) is may
    assert _may_hold_bools(memoryview(header)) is may


def test_bf16_bits_are_torch_s_bit_for_bit():
    """The decoder converts JSON numbers to BF16 without torch: rounding (ties to even), overflow, subnormals and
    NaN give the bits torch gives."""
    rng = np.random.default_rng(11)
    bits = np.concatenate(
        [
            rng.integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32),
            np.arange(0x7F7F0000, 0x7F800010, dtype=np.uint32),  # the largest BF16 values, their ties, inf, NaNs
            np.arange(0, 0x20000, dtype=np.uint32),  # zero and subnormals
            np.array([0x3F808000, 0x3F818000, 0xFF800000, 0xFFC00000, 0x80000000], dtype=np.uint32),
        ]
    )
    values = bits.view(np.float32)
    expected = torch.from_numpy(values.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(datatypes.bf16_bits_from_float(values), expected)
