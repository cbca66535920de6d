"""Tiny TorchScript models whose answers tell which release served a request."""

from __future__ import annotations

from pathlib import Path

import torch

SIGNATURE = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}


class Constant(torch.nn.Module):
    """Answers `value` for every row: version 1 answers 1.0, version 2 answers 2.0..."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=1, keepdim=True) * 0.0 + self.value


class FailsOnRealInput(torch.nn.Module):
    """Passes validation and warm-up (both feed zeros), then fails every real request."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x != 0).any()):
            raise RuntimeError("this release is broken on purpose")
        return x.sum(dim=1, keepdim=True)


def write_constant(directory: Path, value: float) -> Path:
    path = directory / f"constant-{value:g}.pt"
    torch.jit.save(torch.jit.script(Constant(value)), str(path))
    return path


def write_failing(directory: Path) -> Path:
    path = directory / "fails-on-real-input.pt"
    torch.jit.save(torch.jit.script(FailsOnRealInput()), str(path))
    return path
