"""Input/output signatures in Open Inference Protocol style.

`{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}], "outputs": [...]}`,
where -1 marks a variable dimension.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from controlplane.errors import InvalidInput

# Datatypes a PyTorch tensor can carry (BYTES has no tensor equivalent).
TENSOR_DATATYPES = ("BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BF16")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,127}$")
_EXAMPLE = '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}'
_METADATA_EXAMPLE = '{"training_run": "https://...", "git_commit": "abc123", "metrics": {"accuracy": 0.93}}'


# Levels of objects and lists a signature or metadata may nest: the version page draws each one.
MAX_DEPTH = 64
# The most a signature may take as compact JSON. The runtime is given it as one string: a command-line argument
# (the local target) or an environment variable baked into its image, and Linux takes at most 128 KiB in one
# (MAX_ARG_STRLEN). Past that a version would validate, then never start. About 1,500 outputs.
MAX_SIGNATURE_BYTES = 96 * 1024


def _loads(raw: str | bytes, field: str, example: str) -> Any:
    """json.loads, refusing NaN and the infinities (also 1e999): JSON has no such numbers,
    PostgreSQL refuses them, and the API could not write them back."""
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise InvalidInput(_too_deep(field)) from None
    except ValueError as exc:
        raise InvalidInput(f"{field} is not valid JSON ({_reason(exc)}). Example: {example}") from exc


def _too_deep(field: str) -> str:
    return f"{field} is nested too deeply: at most {MAX_DEPTH} levels of objects and lists."


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number; send null or a string instead")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is too large for a number; send it as a string")
    return value


def _reason(exc: ValueError) -> str:
    return exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)


def _check_strings(value: Any, where: str, field: str, depth: int = 1) -> None:
    """Refuse strings that would be stored but could not be served again, keys included, at any depth;
    and nesting deeper than MAX_DEPTH."""
    if isinstance(value, str):
        _check_text(value, where)
    elif isinstance(value, dict | list):
        if depth > MAX_DEPTH:
            raise InvalidInput(_too_deep(field))
        for key, item in value.items() if isinstance(value, dict) else enumerate(value):
            if isinstance(key, str):
                _check_text(key, f"a key in {where}")
            here = f"{where}.{key[:40]}" if isinstance(key, str) else f"{where}[{key}]"
            _check_strings(item, here, field, depth + 1)


def check_storable(value: Any, field: str) -> None:
    """Refuse (InvalidInput) JSON that PostgreSQL or the API could not keep: NUL, lone surrogates, deep nesting."""
    _check_strings(value, field, field)


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        # PostgreSQL's jsonb refuses it.
        raise InvalidInput(f"{where} contains a NUL character (\\u0000), which cannot be stored: remove it.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # json.loads accepts "\ud800"; nothing can write it back out (the API, the pages, PostgreSQL).
        raise InvalidInput(
            f"{where} contains a lone surrogate (\\ud800 to \\udfff), which is not a character: "
            "send the character itself, or both halves of its surrogate pair."
        ) from None


def as_runtime_json(signature: dict) -> str:
    """The signature as the runtime is given it (and as MAX_SIGNATURE_BYTES measures it)."""
    return json.dumps(signature, separators=(",", ":"))


def signature_too_large(signature: Any) -> str | None:
    """Why a measured signature cannot be served (too large to hand to the runtime), or None."""
    if not isinstance(signature, dict):
        return None
    size = len(as_runtime_json(signature))
    if size <= MAX_SIGNATURE_BYTES:
        return None
    return too_large_reason(len(signature.get("inputs") or []), len(signature.get("outputs") or []), size)


def too_large_reason(inputs: int, outputs: int, size: int) -> str:
    return (
        f"The model's signature ({inputs} input{'s' if inputs != 1 else ''}, {outputs} "
        f"output{'s' if outputs != 1 else ''}) is {size / 1024:.0f} KiB as JSON, more than the "
        f"{MAX_SIGNATURE_BYTES // 1024} KiB the runtime can be given (it gets the signature as one command-line "
        "argument or environment variable). Return fewer, larger tensors (stack related outputs into one with "
        "torch.stack or torch.cat) and export it again."
    )


def parse_signature(raw: Any, *, field: str = "signature") -> dict | None:
    """Check a signature given by a client; return it normalised, or None if absent."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, str | bytes):
        raw = _loads(raw, field, _EXAMPLE)
    _check_strings(raw, field, field)
    if not isinstance(raw, dict) or not isinstance(raw.get("inputs"), list) or not raw["inputs"]:
        raise InvalidInput(f"{field} must be an object with a non-empty list 'inputs'. Example: {_EXAMPLE}")
    unknown = set(raw) - {"inputs", "outputs"}
    if unknown:
        raise InvalidInput(f"{field} has unknown keys {sorted(unknown)}; only 'inputs' and 'outputs' are read.")
    result = {"inputs": _tensors(raw["inputs"], f"{field}.inputs")}
    if raw.get("outputs") is not None:
        if not isinstance(raw["outputs"], list):
            raise InvalidInput(f"{field}.outputs must be a list of tensors like the inputs.")
        result["outputs"] = _tensors(raw["outputs"], f"{field}.outputs")
    size = len(as_runtime_json(result))
    if size > MAX_SIGNATURE_BYTES:
        raise InvalidInput(
            f"{field} is {size / 1024:.0f} KiB as JSON, more than the {MAX_SIGNATURE_BYTES // 1024} KiB the runtime "
            "can be given. Declare the inputs only (validation records the outputs), and return fewer, larger "
            "tensors from the model if there are many.",
            fields={field: ["too large"]},
        )
    return result


def _tensors(items: list, where: str) -> list[dict]:
    seen: set[str] = set()
    tensors = []
    for index, item in enumerate(items):
        here = f"{where}[{index}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{here} must be an object with name, datatype and shape.")
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidInput(f"{here}.name must be an identifier such as 'input__0' or 'x'.")
        if name in seen:
            raise InvalidInput(f"{here}.name {name!r} is used twice.")
        seen.add(name)
        if datatype not in TENSOR_DATATYPES:
            raise InvalidInput(f"{here}.datatype {datatype!r} is not one of {', '.join(TENSOR_DATATYPES)}.")
        if (
            not isinstance(shape, list)
            or len(shape) > 16
            or not all(isinstance(d, int) and not isinstance(d, bool) and (d == -1 or d > 0) for d in shape)
        ):
            raise InvalidInput(f"{here}.shape must be a list of positive integers, with -1 for a variable dimension.")
        tensors.append({"name": name, "datatype": datatype, "shape": shape})
    return tensors


def parse_metadata(raw: Any) -> dict:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str | bytes):
        raw = _loads(raw, "metadata", _METADATA_EXAMPLE)
    if not isinstance(raw, dict):
        raise InvalidInput('metadata must be a JSON object, such as {"git_commit": "abc123"}.')
    _check_strings(raw, "metadata", "metadata")
    if len(json.dumps(raw)) > 64 * 1024:
        raise InvalidInput("metadata is larger than 64 KiB; link to large documents instead of embedding them.")
    return raw
