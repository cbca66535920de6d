"""Open Inference Protocol datatypes and their numpy / torch equivalents.

numpy has no bfloat16: BF16 travels as its raw 16 bits in a uint16 array and is
reinterpreted as torch.bfloat16 (same bits) only once it is a tensor.
"""

from __future__ import annotations

import numpy as np
import torch

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

TORCH: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "UINT16": torch.uint16,
    "UINT32": torch.uint32,
    "UINT64": torch.uint64,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "FP32": torch.float32,
    "FP64": torch.float64,
    "BF16": torch.bfloat16,
}

FROM_TORCH: dict[torch.dtype, str] = {v: k for k, v in TORCH.items()}

# Every datatype the protocol names; BYTES has no tensor equivalent.
ALL = (*NUMPY, "BYTES")

# numpy dtype kinds that JSON data may carry for each datatype (JSON ints are fine for floats).
JSON_KINDS: dict[str, str] = {name: "b" for name in ("BOOL",)}
JSON_KINDS.update({name: "iu" for name in ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")})
JSON_KINDS.update({name: "iuf" for name in ("FP16", "FP32", "FP64", "BF16")})

FLOATING = frozenset({"FP16", "FP32", "FP64", "BF16"})


def datatype_of(dtype: torch.dtype) -> str:
    try:
        return FROM_TORCH[dtype]
    except KeyError:
        raise ValueError(f"the model produces {dtype}, which has no Open Inference Protocol datatype") from None


def bf16_bits_from_float(values: np.ndarray) -> np.ndarray:
    """float → bfloat16 bits (round to nearest even, as torch does), as uint16."""
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(torch.bfloat16)
    return tensor.view(torch.int16).numpy().view(np.uint16)


def float_from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def to_tensor(array: np.ndarray, datatype: str) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if datatype == "BF16" else tensor


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU tensor as numpy, BF16 as its raw bits (the wire format)."""
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()
