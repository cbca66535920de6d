"""Small real models for the runtime tests, made with torch (never downloaded).

Each entry: the archive, the signature Slipway's control plane would pass, and the
inputs to try. Kept tiny so that a server starts in about a second.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))

    def forward(self, x):
        return self.net(x)


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 4 * 4, 3)

    def forward(self, image):
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv(image)), 2)
        return torch.softmax(self.head(x.flatten(1)), dim=1)


class TwoInputs(torch.nn.Module):
    """Scores FP64 features under a BOOL mask; returns a tuple (two outputs)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(3, 2))

    def forward(self, features, mask):
        kept = features * mask.to(features.dtype)
        return kept @ self.weight, mask.sum(dim=1)


class Sequence(torch.nn.Module):
    """Token ids of any length → per-token embeddings and a pooled vector (dict outputs)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)
        self.proj = torch.nn.Linear(8, 5)

    def forward(self, tokens) -> dict[str, torch.Tensor]:
        hidden = self.embed(tokens)
        return {"hidden": hidden, "pooled": self.proj(hidden.mean(dim=1))}


class Datatypes(torch.nn.Module):
    """One input per datatype, each returned doubled in its own datatype."""

    def forward(self, u8, i8, i16, i32, f16, bf16, flag):
        return u8 * 2, i8 * 2, i16 * 2, i32 * 2, f16 * 2, bf16 * 2, ~flag


class Echo(torch.nn.Module):
    """Returns its input: served without a signature, it answers whatever datatype it is sent."""

    def forward(self, x):
        return x


class BatchSum(torch.nn.Module):
    """Sums over the first dimension: no row per input row, so its requests cannot share a forward pass."""

    def forward(self, x):
        return x.sum(0)


class Slow(torch.nn.Module):
    """Spins `spin` matrix products per call: a forward pass that takes a while (drain tests).

    A negative x fails it: one bad request in a batch fails the whole forward pass."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.eye(64) * 0.5)

    def forward(self, x, spin):
        if bool((x < 0).any()):
            raise ValueError("x must not be negative")
        state = x.repeat(1, 16)
        for _ in range(int(spin.max())):
            state = torch.tanh(state @ self.weight)
        return x * 2 + state.sum() * 0


@dataclass
class Entry:
    path: Path
    signature: dict | None
    module: torch.nn.Module = field(repr=False)

    @property
    def signature_json(self) -> str:
        return json.dumps(self.signature)


def _spec(name, datatype, shape):
    return {"name": name, "datatype": datatype, "shape": shape}


def write_zoo(directory: Path) -> dict[str, Entry]:
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript; Slipway still serves it, so the tests still make it.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        return _write_zoo(directory)


def _write_zoo(directory: Path) -> dict[str, Entry]:
    torch.manual_seed(0)
    zoo: dict[str, Entry] = {}

    def script(name: str, module: torch.nn.Module, signature: dict) -> None:
        module = module.eval()
        path = directory / f"{name}.pt"
        torch.jit.save(torch.jit.script(module), str(path))
        zoo[name] = Entry(path, signature, module)

    script("mlp", MLP(), {"inputs": [_spec("x", "FP32", [-1, 16])], "outputs": [_spec("output__0", "FP32", [-1, 4])]})
    script("cnn", CNN(), {"inputs": [_spec("image", "FP32", [-1, 1, 8, 8])]})
    script("two_inputs", TwoInputs(), {"inputs": [_spec("features", "FP64", [-1, 3]), _spec("mask", "BOOL", [-1, 3])]})
    script(
        "datatypes",
        Datatypes(),
        {
            "inputs": [
                _spec("u8", "UINT8", [-1, 3]),
                _spec("i8", "INT8", [-1, 3]),
                _spec("i16", "INT16", [-1, 3]),
                _spec("i32", "INT32", [-1, 3]),
                _spec("f16", "FP16", [-1, 3]),
                _spec("bf16", "BF16", [-1, 3]),
                _spec("flag", "BOOL", [-1, 3]),
            ]
        },
    )

    script("echo", Echo(), None)
    script("batch_sum", BatchSum(), {"inputs": [_spec("x", "FP32", [-1, 4])]})
    script(
        "slow",
        Slow(),
        {"inputs": [_spec("x", "FP32", [-1, 4]), _spec("spin", "INT64", [-1, 1])]},
    )

    # torch.export archives record their own signature, symbolic dims included.
    sequence = Sequence().eval()
    batch, length = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("length", min=1, max=512)
    program = torch.export.export(
        sequence, (torch.zeros(2, 3, dtype=torch.long),), dynamic_shapes=({0: batch, 1: length},)
    )
    zoo["sequence"] = Entry(directory / "sequence.pt2", None, sequence)
    torch.export.save(program, str(zoo["sequence"].path))

    mlp = zoo["mlp"].module
    program = torch.export.export(mlp, (torch.zeros(2, 16),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    zoo["mlp_pt2"] = Entry(directory / "mlp.pt2", None, mlp)
    torch.export.save(program, str(zoo["mlp_pt2"].path))

    # Exported for at most 4 rows: its guards refuse a fifth.
    program = torch.export.export(mlp, (torch.zeros(2, 16),), dynamic_shapes=({0: torch.export.Dim("batch", max=4)},))
    zoo["mlp_pt2_4"] = Entry(directory / "mlp_4.pt2", None, mlp)
    torch.export.save(program, str(zoo["mlp_pt2_4"].path))
    return zoo
