"""Real model files for the tests, made with torch (never downloaded)."""

from __future__ import annotations

import os
import pickle
import stat
import zipfile
from pathlib import Path

import torch

MLP_SIGNATURE = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))

    def forward(self, x):
        return self.net(x)


class FileCreator:
    """Unpickling this creates a file: proof that something unpickled it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _zip_with(path: Path, members: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return path


def write_models(directory: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    mlp = MLP().eval()
    files: dict[str, Path] = {}

    files["torchscript"] = directory / "mlp.pt"
    torch.jit.save(torch.jit.script(mlp), str(files["torchscript"]))

    files["pt2"] = directory / "mlp.pt2"
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(mlp, (torch.zeros(2, 4),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(files["pt2"]))

    files["whole_pickle"] = directory / "whole.pt"
    torch.save(mlp, str(files["whole_pickle"]))
    files["state_dict"] = directory / "state_dict.pt"
    torch.save(mlp.state_dict(), str(files["state_dict"]))

    files["evil_pickle_marker"] = directory / "pwned"
    files["evil_pickle"] = directory / "evil.pkl"
    files["evil_pickle"].write_bytes(pickle.dumps(FileCreator(str(files["evil_pickle_marker"]))))

    files["not_a_model"] = directory / "notes.txt"
    files["not_a_model"].write_text("these are not the weights you are looking for\n")

    data = files["torchscript"].read_bytes()
    files["truncated"] = directory / "truncated.pt"
    files["truncated"].write_bytes(data[: len(data) // 2])

    # A TorchScript archive whose member bytes are damaged (central directory intact).
    with zipfile.ZipFile(files["torchscript"]) as src:
        members = {info.filename: src.read(info.filename) for info in src.infolist()}
    files["corrupt"] = directory / "corrupt.pt"
    with zipfile.ZipFile(files["corrupt"], "w", compression=zipfile.ZIP_STORED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    raw = bytearray(files["corrupt"].read_bytes())
    offset = raw.find(members["mlp/data.pkl"][:16])
    raw[offset : offset + 8] = b"\x00" * 8
    files["corrupt"].write_bytes(bytes(raw))

    files["absolute_path"] = _zip_with(directory / "absolute.pt", {**members, "/etc/cron.d/evil": b"x"})
    files["dotdot"] = _zip_with(directory / "dotdot.pt", {**members, "mlp/../../evil": b"x"})
    files["symlink"] = _zip_with(directory / "symlink.pt", members, symlinks=("mlp/code/link",))
    return files
