"""Open Inference Protocol bodies ⇄ numpy arrays: JSON and the binary tensor extension.

The hot path: one orjson parse, one numpy conversion per input (np.frombuffer for
binary data, a zero-copy view of the body), one orjson dump with numpy arrays.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from inference_runtime import datatypes
from inference_runtime.errors import InvalidInput, RuntimeFailure, Unsupported

if TYPE_CHECKING:  # the decoder process (offload.py) imports this module without torch
    from inference_runtime.model import Outputs

_NUMPY_OPTION = orjson.OPT_SERIALIZE_NUMPY
# A JSON value that overflows its float datatype is refused below; numpy's warning about the cast is noise.
warnings.filterwarnings(
    "ignore", message="overflow encountered", category=RuntimeWarning, module=r"inference_runtime\.(codec|datatypes)"
)
MAX_RANK = 32  # numpy stops at 64; no model takes more than a handful
# The largest finite value of each float datatype, for JSON values that would overflow to inf.
_FLOAT_MAX = {
    "FP16": float(np.finfo(np.float16).max),
    "FP32": float(np.finfo(np.float32).max),
    "BF16": float(np.array(0x7F7F0000, dtype=np.uint32).view(np.float32)),  # torch.finfo(torch.bfloat16).max
}
_KIND_NAMES = {
    "b": "booleans",
    "i": "integers",
    "u": "integers",
    "f": "numbers written with a fraction or exponent (such as 1.5, 1.0 or 1e3)",
    "U": "strings",
}


@dataclass(slots=True)
class Request:
    id: str | None
    arrays: list[np.ndarray]  # in the model's input order
    datatypes: tuple[str, ...]  # of each array (BF16 travels as uint16 bits)
    rows: int  # first dimension, shared by every input when the model batches
    key: Any  # requests with equal keys can be stacked; None: never stacked
    outputs: list[tuple[str, bool]] | None  # requested (name, binary), or None: all
    binary_default: bool


def decode_request(body: bytes, header_length: int | None, model: Any) -> Request:
    """Parse and check an infer request against the model's inputs. Raises InvalidInput."""
    if header_length is None:
        header, binary = body, None
    else:
        if not 0 < header_length <= len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length is {header_length}, but the body has {len(body)} bytes"
            )
        view = memoryview(body)
        header, binary = view[:header_length], view[header_length:]
    try:
        request = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        request = _loads_nonfinite(header)
        if request is None:
            where = " (check Inference-Header-Content-Length)" if binary is not None else ""
            raise InvalidInput(f"the request is not valid JSON{where}: {exc}") from None
    if not isinstance(request, dict):
        raise InvalidInput("the request must be a JSON object with an 'inputs' list")
    items = request.get("inputs")
    if not isinstance(items, list) or not items:
        raise InvalidInput("the request must have a non-empty 'inputs' list")

    request_id = request.get("id")
    if request_id is not None and type(request_id) is not str:
        raise InvalidInput("'id' must be a string")

    specs = model.inputs
    index_of = model.input_index
    bounds = model.bounds
    arrays: list[np.ndarray | None] = [None] * len(specs)
    datatype_of: list[str | None] = [None] * len(specs)
    offset = 0
    bools: bool | None = None  # whether the JSON holds true or false anywhere, once an input needs to know
    for item in items:
        if not isinstance(item, dict):
            raise InvalidInput("each input must be an object with name, shape, datatype and data")
        name = item.get("name")
        index = index_of.get(name) if type(name) is str else None
        if index is None:
            raise _unknown_input(item, specs)
        if arrays[index] is not None:
            raise InvalidInput(f"input {name!r} is given twice")
        spec = specs[index]
        datatype = item.get("datatype")
        dtype = datatypes.NUMPY.get(datatype) if type(datatype) is str else None
        if dtype is None or (spec.datatype is not None and datatype != spec.datatype):
            raise _wrong_datatype(name, datatype, spec.datatype)
        shape = item.get("shape")
        if type(shape) is not list or not _positive_ints(shape):
            raise InvalidInput(
                f"input {name!r} needs a shape: a list of up to {MAX_RANK} positive integers, such as [1, 4]"
            )
        if spec.shape is not None and not _fits(shape, spec.shape):
            raise InvalidInput(f"input {name!r} has shape {shape}; the model takes {list(spec.shape)} (-1: any)")
        if bounds is not None and bounds[index]:
            _check_bounds(name, shape, bounds[index])
        count = math.prod(shape)
        parameters = item.get("parameters")
        if isinstance(parameters, dict):
            size = parameters.get("binary_data_size")
        elif parameters is None:
            size = None
        else:
            raise _not_an_object(f"input {name!r}: 'parameters'", parameters, '{"binary_data_size": 64}')
        if size is not None:
            if binary is None:
                raise InvalidInput(
                    f"input {name!r} has binary_data_size but the request has no Inference-Header-Content-Length"
                )
            if type(size) is not int or size != count * dtype.itemsize:
                raise InvalidInput(
                    f"input {name!r}: binary_data_size is {_described(size)}, but shape {shape} of {datatype} "
                    f"takes {count * dtype.itemsize} bytes"
                )
            if "data" in item:  # which would be the input: the bytes, or the numbers?
                raise InvalidInput(f"input {name!r} has both 'data' and binary_data_size: send one of them")
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input {name!r} needs bytes {offset}..{offset + size} of the binary data, "
                    f"but only {len(binary)} follow the JSON header"
                )
            array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
            if datatype == "BOOL":
                array = array.view(np.uint8) != 0  # a byte other than 0 or 1 is still one bool
            offset += size
        else:
            if "data" not in item:
                raise InvalidInput(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
            if bools is None and datatype != "BOOL":
                bools = _may_hold_bools(header)
            array = _from_json(item["data"], name, datatype, dtype, shape, count, bools)
        arrays[index] = array
        datatype_of[index] = datatype
    if binary is not None and offset != len(binary):
        raise InvalidInput(
            f"{len(binary)} bytes of binary data follow the JSON header, but the inputs' binary_data_size "
            f"add up to {offset} (check Inference-Header-Content-Length)"
        )
    if len(items) != len(specs):  # each item filled a different input, so some input is missing
        missing = [spec.describe() for spec, array in zip(specs, arrays, strict=True) if array is None]
        raise InvalidInput(f"missing input(s): {', '.join(missing)}")

    rows, key = 1, None
    if model.batchable:
        rows = arrays[0].shape[0]
        if rows > model.max_request_rows:
            raise InvalidInput(
                f"the request has {rows} rows; this server takes at most {model.max_request_rows} per request "
                "(its maximum batch size): send them in several requests"
            )
        parts = []
        for array, datatype in zip(arrays, datatype_of):  # noqa: B905 - same length
            if array.shape[0] != rows:
                raise InvalidInput("every input must have the same first (batch) dimension")
            parts.append((array.shape[1:], datatype))
        key = tuple(parts)

    parameters = request.get("parameters")
    if isinstance(parameters, dict):
        binary_default = _flag(parameters, "binary_data_output", False)
    elif parameters is None:
        binary_default = False
    else:
        raise _not_an_object("the request's 'parameters'", parameters, '{"binary_data_output": true}')
    return Request(
        id=request_id,
        arrays=arrays,
        datatypes=tuple(datatype_of),
        rows=rows,
        key=key,
        outputs=_requested_outputs(request.get("outputs"), model, binary_default),
        binary_default=binary_default,
    )


# The error messages below run only for a bad request: they may take their time.
_JSON_TYPES = {
    bool: "a boolean",
    int: "a number",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
}


def _json_type(value: Any) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _shown(value: str, limit: int = 64) -> str:
    """A string from the request, quoted and cut short: an error message need not echo a megabyte."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."


def _described(value: Any) -> str:
    """A value from the request for an error message: a string or a number as such, a list or object by its type."""
    if type(value) is str:
        return _shown(value)
    return _json_type(value) if isinstance(value, list | dict) else repr(value)[:64]


def _unknown_input(item: dict, specs: list) -> InvalidInput:
    expected = ", ".join(spec.describe() for spec in specs)
    name = item.get("name")
    if type(name) is str:
        return InvalidInput(f"unexpected input {_shown(name)}: the model takes {expected}")
    got = "has no 'name'" if "name" not in item else f"has a 'name' that is {_json_type(name)}"
    return InvalidInput(f"an input {got}: give each input its name as a string; the model takes {expected}")


def _wrong_datatype(name: str, datatype: Any, wanted: str | None) -> RuntimeFailure:
    if type(datatype) is not str:
        what = "has no 'datatype'" if datatype is None else f"has a 'datatype' that is {_json_type(datatype)}"
        send = f"the string {wanted!r}" if wanted is not None else f"a string, one of {', '.join(datatypes.NUMPY)}"
        return InvalidInput(f"input {name!r} {what}: send {send}")
    if wanted is not None:
        return InvalidInput(f"input {name!r} must be {wanted}, not {_shown(datatype)}")
    if datatype == "BYTES":  # a datatype of the protocol this server does not implement: 501
        return Unsupported(
            f"input {name!r} is BYTES, which this server does not support: a PyTorch model takes numeric "
            "tensors; encode text as token ids (INT64) before sending it"
        )
    return InvalidInput(
        f"input {name!r} has an unknown datatype {_shown(datatype)}; send one of {', '.join(datatypes.NUMPY)}"
    )


def _not_an_object(what: str, value: Any, example: str) -> InvalidInput:
    return InvalidInput(f"{what} must be an object, such as {example}, not {_json_type(value)}")


def _loads_nonfinite(header: bytes | memoryview) -> Any:
    """JSON with NaN, Infinity or -Infinity, as Python's json.dumps and Triton's clients write them (orjson
    refuses them), read by the standard library; None when it is not that either."""
    text = bytes(header)
    if b"NaN" not in text and b"Infinity" not in text:
        return None
    try:
        # A number too large for a float (1e400) stays refused, as orjson refuses it: it is not Infinity.
        value = json.loads(text, parse_float=_finite_float)
        orjson.dumps(value)  # what orjson refuses besides (a lone surrogate), so the answer can be written
        return value
    except (ValueError, RecursionError, TypeError, orjson.JSONEncodeError):
        return None


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:40]} is out of range")
    return value


def _flag(parameters: dict, name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if type(value) is not bool:
        raise InvalidInput(f"the parameter {name!r} must be true or false, not {_described(value)}")
    return value


def _check_bounds(name: str, shape: list[int], dims: dict[int, tuple[int, int | None]]) -> None:
    """The ranges a torch.export program was exported for (its guards refuse anything else)."""
    for i, (low, high) in dims.items():
        if shape[i] < low or (high is not None and shape[i] > high):
            takes = f"{low} to {high}" if high is not None else f"at least {low}"
            raise InvalidInput(f"input {name!r} has {shape[i]} in dimension {i}; the model takes {takes} there")


# These two run for every request: a plain loop costs under half of all() or any() over a generator.
def _positive_ints(shape: list) -> bool:
    if not shape or len(shape) > MAX_RANK:
        return False
    for d in shape:  # noqa: SIM110
        if type(d) is not int or d <= 0:  # bool is not an int here
            return False
    return True


def _fits(shape: list[int], wanted: tuple[int, ...]) -> bool:
    """Whether `shape` matches the model's, where -1 takes any size."""
    if len(shape) != len(wanted):
        return False
    for want, got in zip(wanted, shape):  # noqa: B905, SIM110 - lengths compared above
        if want != -1 and want != got:
            return False
    return True


def _may_hold_bools(header: bytes | memoryview) -> bool:
    """Whether the JSON may hold a true or false inside a list: numpy reads [1, true] as [1, 1], so numeric data
    must then be looked at value by value (2 to 3 µs for 256 values).

    This runs for every JSON request, so it finds letters (memchr) rather than words: a plain numeric request
    has no r and no f at all (its keys are inputs, name, shape, datatype and data), and looking for both letters
    costs 0.1 µs on a 5 KB body, where CPython's search for the word "true" crawls over digits (several µs).
    A true or false in a list follows a [ or a comma; one after a colon is a parameter's (binary_data_output),
    which tritonclient sends with every request."""
    if type(header) is not bytes:
        header = bytes(header)  # a binary request's JSON header: a few hundred bytes
    if b"r" not in header and b"f" not in header:
        return False
    # u is rarer than t in a request's keys (inputs, outputs): fewer stops on the way.
    for letter, word, at in ((b"u", b"true", 2), (b"f", b"false", 0)):
        i = header.find(letter, at)
        while i >= 0:
            if header.startswith(word, i - at):
                j = i - at - 1
                while j > 0 and header[j] in b" \t\r\n":
                    j -= 1
                if header[j] in b"[,":
                    return True
            i = header.find(letter, i + 1)
    return False


def _from_json(
    data: Any, name: str, datatype: str, dtype: np.dtype, shape: list[int], count: int, bools: bool | None
) -> np.ndarray:
    try:
        array = np.asarray(data)  # nested or flat; no dtype, so that strings or nulls show up as such
    except (ValueError, TypeError):
        raise InvalidInput(f"input {name!r}: data is ragged; give a flat list or evenly nested lists") from None
    kind = array.dtype.kind
    if datatype == "UINT64" and kind in "fO":
        array, kind = _uint64_from_json(data), "u"  # numpy reads ints past 2**63 as floats
    if kind not in datatypes.JSON_KINDS[datatype]:
        if kind in "fO" and dtype.kind in "iu" and _all_ints(array):  # ints too large for numpy's int64
            raise InvalidInput(f"input {name!r}: a value is out of range for {datatype}")
        what = _KIND_NAMES.get(kind, "values of mixed or unsupported types")
        raise InvalidInput(f"input {name!r} is {datatype}, but its data holds {what}: {_send(datatype)}")
    if bools and kind != "b" and _holds_bools(data, array.ndim):
        what = "booleans among numbers"
        raise InvalidInput(f"input {name!r} is {datatype}, but its data holds {what}: {_send(datatype)}")
    if array.size != count:
        raise InvalidInput(f"input {name!r} has shape {shape} ({count} elements), but its data holds {array.size}")
    if kind in "iu" and dtype.kind in "iu" and array.dtype != dtype:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidInput(f"input {name!r}: a value is out of range for {datatype}")
    source = array
    array = datatypes.bf16_bits_from_float(array) if datatype == "BF16" else array.astype(dtype, copy=False)
    largest = _FLOAT_MAX.get(datatype)
    if largest is not None and _may_overflow(source, kind, datatype, largest) and _overflowed(source, array, datatype):
        raise InvalidInput(f"input {name!r}: a value is out of range for {datatype} (at most ±{largest:.6g})")
    return array.reshape(shape)


def _may_overflow(source: np.ndarray, kind: str, datatype: str, largest: float) -> bool:
    """A cheap first look (0.3 µs for 256 values, the exact check 1.1): any |v| past `largest`
    puts the sum of squares past largest², which float64 holds for every float datatype here."""
    if kind != "f":
        return datatype == "FP16"  # no int64 overflows FP32 or BF16; FP16 stops at 65504
    flat = source.reshape(-1)
    return not flat.dot(flat) <= largest * largest  # a NaN makes the sum NaN: look closer


def _overflowed(source: np.ndarray, array: np.ndarray, datatype: str) -> bool:
    """A finite value that became infinite in the cast (Infinity sent as such stays infinite)."""
    infinite = (array & 0x7FFF) == 0x7F80 if datatype == "BF16" else np.isinf(array)  # BF16: raw bits
    return bool((infinite & np.isfinite(source)).any())


def _send(datatype: str) -> str:
    """What to send instead, for a wrong-type error."""
    if datatype == "BOOL":
        return "send true or false"
    if datatype in datatypes.FLOATING:
        return "send numbers (true and false are for BOOL inputs)"
    return "send integers, such as 1"


def _holds_bools(data: Any, ndim: int) -> bool:
    values = data if ndim == 1 else np.array(data, dtype=object).reshape(-1).tolist()
    return bool in map(type, values)


def _all_ints(array: np.ndarray) -> bool:
    return array.dtype.kind == "O" and all(type(v) is int for v in array.reshape(-1).tolist())


def _uint64_from_json(data: Any) -> np.ndarray:
    flat = np.array(data, dtype=object).reshape(-1)
    if not all(type(v) is int and 0 <= v < 2**64 for v in flat):
        raise InvalidInput("a UINT64 input holds something other than integers from 0 to 2**64-1")
    return np.array(flat.tolist(), dtype=np.uint64)


def _requested_outputs(raw: Any, model: Any, binary_default: bool) -> list[tuple[str, bool]] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be a list of objects with a name")
    requested, seen = [], set()
    for item in raw:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise InvalidInput("each requested output must be an object with a name")
        if model.output_index is not None and name not in model.output_index:
            raise InvalidInput(f"unknown output {_shown(name)}: the model returns {', '.join(model.output_index)}")
        if name in seen:
            raise InvalidInput(f"output {_shown(name)} is requested twice")
        seen.add(name)
        parameters = item.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise _not_an_object(f"output {_shown(name)}: 'parameters'", parameters, '{"binary_data": true}')
        if isinstance(parameters, dict) and parameters.get("classification"):
            # Triton's top-k extension (tritonclient's class_count): answering raw values instead would pass
            # for labels.
            raise Unsupported(
                f"output {_shown(name)} asks for classification (the top {_described(parameters['classification'])} "
                "classes), an extension this server does not support: request the output itself and take the top "
                "classes"
            )
        binary = _flag(parameters, "binary_data", binary_default) if isinstance(parameters, dict) else binary_default
        requested.append((name, binary))
    return requested


# Values of a JSON output written by one orjson call (a few ms): orjson holds the GIL for a whole call, so a larger
# output is written in pieces, on a thread, which lets the event loop in between them (server.py).
ENCODE_INLINE_VALUES = 64 * 1024


def _json_data(flat: np.ndarray) -> np.ndarray | orjson.Fragment:
    """A flat output as its JSON list: as is when small and finite (orjson writes it with the response),
    else a Fragment written ENCODE_INLINE_VALUES values at a time."""
    nonfinite = flat.dtype.kind == "f" and not np.isfinite(flat).all()
    if flat.size <= ENCODE_INLINE_VALUES:
        return orjson.Fragment(_with_nonfinite(flat)) if nonfinite else flat
    write = _with_nonfinite if nonfinite else _plain
    parts = []
    for i in range(0, flat.size, ENCODE_INLINE_VALUES):
        parts += (b",", memoryview(write(flat[i : i + ENCODE_INLINE_VALUES]))[1:-1])  # without its [ and ]
    parts[0] = b"["
    parts.append(b"]")
    return orjson.Fragment(b"".join(parts))


def _plain(flat: np.ndarray) -> bytes:
    return orjson.dumps(flat, option=_NUMPY_OPTION)


def _with_nonfinite(flat: np.ndarray) -> bytes:
    """orjson writes NaN and ±inf as null (a client reads nan, or fails); Python's json module and Triton's
    clients write and read the tokens NaN, Infinity and -Infinity."""
    tokens = orjson.dumps(flat, option=_NUMPY_OPTION)[1:-1].split(b",")
    for i in np.flatnonzero(~np.isfinite(flat)).tolist():
        value = flat[i]
        tokens[i] = b"NaN" if np.isnan(value) else b"Infinity" if value > 0 else b"-Infinity"
    return b"[" + b",".join(tokens) + b"]"


def encode_response(
    request: Request, result: Outputs, model_name: str, model_version: str
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of an infer response; binary outputs follow the JSON header."""
    arrays, specs = result  # each output's name and datatype came with it from the forward pass
    names = [spec.name for spec in specs]
    if request.outputs is None:
        selected = [(i, request.binary_default) for i in range(len(arrays))]
    else:
        position = {name: i for i, name in enumerate(names)}
        selected = []
        for name, binary in request.outputs:
            if name not in position:
                raise InvalidInput(f"unknown output {_shown(name)}: the model returns {', '.join(names)}")
            selected.append((position[name], binary))

    outputs, chunks = [], []
    for i, binary in selected:
        array = arrays[i]
        datatype = specs[i].datatype
        entry: dict[str, Any] = {"name": names[i], "datatype": datatype, "shape": list(array.shape)}
        if binary:
            chunk = np.ascontiguousarray(array)
            entry["parameters"] = {"binary_data_size": chunk.nbytes}
            chunks.append(chunk)
        else:
            flat = array.reshape(-1)
            if datatype == "BF16":
                flat = datatypes.float_from_bf16_bits(flat)
            entry["data"] = _json_data(flat)
        outputs.append(entry)

    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = outputs
    header = orjson.dumps(response, option=_NUMPY_OPTION)
    if not chunks:
        return [(b"content-type", b"application/json"), (b"content-length", str(len(header)).encode())], header
    body = b"".join([header, *chunks])
    return [
        (b"content-type", b"application/octet-stream"),
        (b"inference-header-content-length", str(len(header)).encode()),
        (b"content-length", str(len(body)).encode()),
    ], body
