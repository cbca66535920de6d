"""Recognise a model artifact by its content, without ever unpickling it.

Only the zip central directory and, for pickles, the opcode stream (read by
`pickletools`, which parses and never executes) are looked at. Loading the model
happens only in the sandboxed validator child and in the runtime.
"""

from __future__ import annotations

import pickletools
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from lzma import LZMAError
from pathlib import PurePosixPath
from typing import BinaryIO

HOW_TO_EXPORT = (
    "Export the model instead with TorchScript: "
    "torch.jit.save(torch.jit.script(model), 'model.pt') "
    "or torch.export: torch.export.save(torch.export.export(model, example_inputs), 'model.pt2')."
)

UNSAFE_ARCHIVE = "torch does not write archives like this. " + HOW_TO_EXPORT
DAMAGED = "Upload the file again; if it is refused again, export it again. " + HOW_TO_EXPORT


class ArtifactRejected(Exception):
    """The file is not an acceptable model; the message says how to fix it."""


@dataclass(frozen=True)
class ArchiveInfo:
    format: str  # "torchscript" or "torch_export"
    members: int
    uncompressed_bytes: int


def inspect_artifact(fh: BinaryIO, *, max_members: int, max_uncompressed: int, test_crc: bool = False) -> ArchiveInfo:
    """Classify an uploaded file, or raise ArtifactRejected saying why and what to do."""
    fh.seek(0)
    head = fh.read(8)
    fh.seek(0)
    if not head:
        raise ArtifactRejected("The file is empty. " + HOW_TO_EXPORT)
    if not zipfile.is_zipfile(fh):
        fh.seek(0)
        if head.startswith(b"PK\x03\x04"):
            raise ArtifactRejected(
                "This zip archive is truncated or corrupt: its table of contents is missing. " + DAMAGED
            )
        if head[:1] == b"\x80" or _looks_like_pickle(fh):
            raise ArtifactRejected(
                "This is a pickled Python object (torch.save(model), pickle.dump or a legacy torch.save file). "
                "Loading a pickle runs arbitrary code, so Slipway refuses it. " + HOW_TO_EXPORT
            )
        raise ArtifactRejected(
            "This file is not a PyTorch model archive (neither TorchScript nor torch.export .pt2). " + HOW_TO_EXPORT
        )
    members = _count_members(fh, max_members)
    if members > max_members:
        raise ArtifactRejected(f"The archive has more than {max_members} files; at most {max_members} are accepted.")
    fh.seek(0)
    try:
        archive = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArtifactRejected(f"The archive is corrupt or truncated ({exc}). " + DAMAGED) from exc
    with archive:
        infos = archive.infolist()
        _check_members(infos, max_members=max_members, max_uncompressed=max_uncompressed)
        names = {info.filename for info in infos}
        fmt = _detect_format(names)
        if fmt is None:
            raise ArtifactRejected(_why_not_a_model(archive, names))
        if test_crc:
            # Reading a member meets what its compression's library raises for garbled data (zlib.error,
            # LZMAError), and RuntimeError for a member flagged encrypted.
            try:
                bad = archive.testzip()
            except (
                zipfile.BadZipFile,
                OSError,
                EOFError,
                NotImplementedError,
                RuntimeError,
                zlib.error,
                LZMAError,
            ) as exc:
                raise ArtifactRejected(f"The archive is corrupt or truncated ({exc}). " + DAMAGED) from exc
            if bad is not None:
                raise ArtifactRejected(f"The archive member {bad!r} is corrupt. " + DAMAGED)
        return ArchiveInfo(format=fmt, members=len(infos), uncompressed_bytes=sum(i.file_size for i in infos))


def _count_members(fh: BinaryIO, limit: int) -> int:
    """How many entries the zip's central directory holds, counted up to limit + 1.

    zipfile reads the whole directory and makes a ZipInfo (about 500 bytes) of each entry (47 bytes
    at the least) before anything can be checked: a 4 GiB upload of empty entries would need 40 GiB.
    The end record's own count is not what zipfile reads (it walks the directory's bytes), so the
    entries are counted the same way. 0 when there is no end record: ZipFile then refuses the file.
    """
    endrec = zipfile._EndRecData(fh)
    if not endrec:
        return 0
    size = endrec[zipfile._ECD_SIZE]
    start = endrec[zipfile._ECD_LOCATION] - size  # where zipfile starts, concatenated data included
    if endrec[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
        start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
    count = position = 0
    while position < size and count <= limit:
        fh.seek(start + position)
        header = fh.read(zipfile.sizeCentralDir)
        if len(header) < zipfile.sizeCentralDir:
            break  # ZipFile says what is wrong
        name, extra, comment = struct.unpack_from("<3H", header, 28)
        position += zipfile.sizeCentralDir + name + extra + comment
        count += 1
    return count


def _check_members(infos: list[zipfile.ZipInfo], *, max_members: int, max_uncompressed: int) -> None:
    if len(infos) > max_members:
        raise ArtifactRejected(f"The archive has {len(infos)} files; at most {max_members} are accepted.")
    total = 0
    for info in infos:
        name = info.filename
        path = PurePosixPath(name.replace("\\", "/"))
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or path.is_absolute():
            raise ArtifactRejected(f"The archive contains an absolute path ({name!r}). " + UNSAFE_ARCHIVE)
        if ".." in path.parts:
            raise ArtifactRejected(f"The archive contains a path that climbs out ({name!r}). " + UNSAFE_ARCHIVE)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ArtifactRejected(f"The archive contains a symbolic link ({name!r}). " + UNSAFE_ARCHIVE)
        total += info.file_size
        if total > max_uncompressed:
            raise ArtifactRejected(
                f"The archive unpacks to more than {max_uncompressed} bytes; raise "
                "SLIPWAY_ARCHIVE_MAX_UNCOMPRESSED_BYTES if this model really is that large."
            )


def _detect_format(names: set[str]) -> str | None:
    roots = {name.split("/", 1)[0] for name in names if "/" in name}
    for root in roots:
        if f"{root}/archive_format" in names and any(n.startswith(f"{root}/models/") for n in names):
            return "torch_export"
        if (
            f"{root}/constants.pkl" in names
            and f"{root}/data.pkl" in names
            and any(n.startswith(f"{root}/code/") for n in names)
        ):
            return "torchscript"
    return None


def _why_not_a_model(archive: zipfile.ZipFile, names: set[str]) -> str:
    data_pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
    if data_pkl is None:
        return (
            "This zip archive is not a PyTorch model (no TorchScript code, no torch.export program). " + HOW_TO_EXPORT
        )
    # A torch.save() zip: tell a whole pickled module from a bare state_dict by
    # the globals its pickle names, read statically.
    globals_named = _pickle_globals(archive, data_pkl)
    if any(module.startswith("collections") and name == "OrderedDict" for module, name in globals_named) and not any(
        module.startswith(("torch.nn.modules", "__main__")) for module, _ in globals_named
    ):
        return (
            "This is a bare state_dict (weights without the model's code), saved with torch.save. "
            "Slipway needs a self-contained program. " + HOW_TO_EXPORT
        )
    return (
        "This is a whole model pickled with torch.save(model). Loading it would run arbitrary code "
        "and needs your Python classes, so Slipway refuses it. " + HOW_TO_EXPORT
    )


def _pickle_globals(archive: zipfile.ZipFile, member: str, limit: int = 16 * 1024**2) -> set[tuple[str, str]]:
    info = archive.getinfo(member)
    if info.file_size > limit:
        return set()
    try:
        data = archive.read(member)
        found: set[tuple[str, str]] = set()
        strings: list[str] = []
        for opcode, arg, _pos in pickletools.genops(data):
            if opcode.name == "GLOBAL" and isinstance(arg, str):
                module, _, name = arg.partition(" ")
                found.add((module, name))
            elif opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE") and isinstance(arg, str):
                strings.append(arg)
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.add((strings[-2], strings[-1]))
        return found
    except Exception:  # a malformed pickle: it is refused either way
        return set()


def _looks_like_pickle(fh: BinaryIO) -> bool:
    data = fh.read(1024 * 1024)
    fh.seek(0)
    try:
        for _opcode, _arg, _pos in pickletools.genops(data):
            pass
        return True
    except Exception:
        return False
