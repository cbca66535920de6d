"""Open Inference Protocol datatypes and their numpy equivalents, and a tensor's name, datatype and shape.

numpy has no bfloat16: BF16 travels as its raw 16 bits in a uint16 array and is
reinterpreted as torch.bfloat16 (same bits) only once it is a tensor (model.py).
Free of torch: the decoder process (offload.py) imports this without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),  # raw bits, see the module docstring
}

# Every datatype the protocol names; BYTES has no tensor equivalent.
ALL = (*NUMPY, "BYTES")

# numpy dtype kinds that JSON data may carry for each datatype (JSON ints are fine for floats).
JSON_KINDS: dict[str, str] = {name: "b" for name in ("BOOL",)}
JSON_KINDS.update({name: "iu" for name in ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")})
JSON_KINDS.update({name: "iuf" for name in ("FP16", "FP32", "FP64", "BF16")})

FLOATING = frozenset({"FP16", "FP32", "FP64", "BF16"})


def bf16_bits_from_float(values: np.ndarray) -> np.ndarray:
    """float → bfloat16 bits, as uint16: rounded to nearest even, every NaN 0xFFFF, bit for bit as torch does."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    return np.where((bits & 0x7FFFFFFF) > 0x7F800000, np.uint16(0xFFFF), rounded)


def float_from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str | None  # None: not known (a TorchScript model served without a signature)
    shape: tuple[int, ...] | None

    def as_json(self) -> dict:
        return {"name": self.name, "datatype": self.datatype or "FP32", "shape": list(self.shape or (-1,))}

    def describe(self) -> str:
        return f"{self.name} ({self.datatype or 'any datatype'} {list(self.shape) if self.shape else 'any shape'})"
