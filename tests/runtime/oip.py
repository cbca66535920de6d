"""A small hand-written Open Inference Protocol client for tests (JSON and binary bodies).

Independent of the runtime's own codec on purpose: both sides must agree on the wire.
"""

from __future__ import annotations

import json

import numpy as np
import torch

DATATYPE = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}
NUMPY = {v: k for k, v in DATATYPE.items()}


class BF16:
    """Marks float32 values to be sent as BF16 (numpy has no bfloat16)."""

    def __init__(self, values: np.ndarray):
        self.values = np.asarray(values, dtype=np.float32)
        self.shape = self.values.shape

    def bits(self) -> bytes:
        return (self.values.view(np.uint32) >> 16).astype("<u2").tobytes()  # exact for bf16-representable values

    def tensor(self) -> torch.Tensor:
        return torch.from_numpy(self.values).to(torch.bfloat16)


def _datatype(value) -> str:
    return "BF16" if isinstance(value, BF16) else DATATYPE[value.dtype]


def json_request(inputs: dict, **extra) -> bytes:
    body = {
        "inputs": [
            {
                "name": name,
                "shape": list(value.shape),
                "datatype": _datatype(value),
                "data": (value.values if isinstance(value, BF16) else value).reshape(-1).tolist(),
            }
            for name, value in inputs.items()
        ],
        **extra,
    }
    return json.dumps(body).encode()


def binary_request(inputs: dict, *, binary_output: bool = True, **extra) -> tuple[bytes, dict]:
    entries, chunks = [], []
    for name, value in inputs.items():
        raw = value.bits() if isinstance(value, BF16) else np.ascontiguousarray(value).tobytes()
        entries.append(
            {
                "name": name,
                "shape": list(value.shape),
                "datatype": _datatype(value),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        chunks.append(raw)
    header = json.dumps({"inputs": entries, "parameters": {"binary_data_output": binary_output}, **extra}).encode()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    return header + b"".join(chunks), headers


def parse_response(response) -> dict[str, np.ndarray]:
    """Outputs by name as numpy (BF16 as float32), from a JSON or binary response."""
    assert response.status_code == 200, response.text
    header_length = response.headers.get("inference-header-content-length")
    content = response.content
    if header_length is None:
        header, binary = json.loads(content), b""
    else:
        header, binary = json.loads(content[: int(header_length)]), content[int(header_length) :]
    outputs, offset = {}, 0
    for output in header["outputs"]:
        datatype, shape = output["datatype"], output["shape"]
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            raw = binary[offset : offset + size]
            offset += size
            if datatype == "BF16":
                array = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                array = np.frombuffer(raw, NUMPY[datatype])
        else:
            array = np.asarray(output["data"], dtype=np.float32 if datatype == "BF16" else NUMPY[datatype])
        outputs[output["name"]] = array.reshape(shape)
    assert offset == len(binary)
    return outputs


def expected_outputs(module: torch.nn.Module, inputs: dict) -> dict[str, np.ndarray]:
    """What a direct `module(*inputs)` returns, named the way the runtime names outputs."""
    tensors = [value.tensor() if isinstance(value, BF16) else torch.from_numpy(value) for value in inputs.values()]
    with torch.inference_mode():
        out = module(*tensors)
    if isinstance(out, torch.Tensor):
        items = [("output__0", out)]
    elif isinstance(out, dict):
        items = list(out.items())
    else:
        items = [(f"output__{i}", t) for i, t in enumerate(out)]
    return {name: (t.float() if t.dtype == torch.bfloat16 else t).numpy() for name, t in items}


def assert_outputs_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name, expected in want.items():
        actual = got[name]
        assert actual.shape == expected.shape, name
        if expected.dtype.kind == "f":
            np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            assert actual.dtype == expected.dtype, name
            np.testing.assert_array_equal(actual, expected, err_msg=name)
