"""Validate a stored artifact in an isolated child process.

The worker never loads the model itself. It checks the bytes (SHA-256, archive
structure), then starts `sandbox_child.py` with:
- an empty environment (no database URL, no secrets), a fresh temporary HOME;
- a new network namespace where the OS allows it (no network at all);
- Landlock where the kernel has it: it reads only Python, system libraries and
  its artifact, and writes only its temporary home (registry/landlock.py);
- rlimits on address space, CPU time, file size and core dumps;
- a wall-clock timeout, after which its whole process group is killed, and
  death with the worker (a killed worker leaves no child running).
The child answers one JSON line on stdout, read only once it has exited by itself;
the model's own prints go to its stderr (the child points descriptor 1 there before
loading it), so nothing the model prints can be taken for a verdict. Both are files
under the file-size limit, never held whole in the worker's memory.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path

from django.conf import settings

from controlplane.errors import InvalidInput
from registry import landlock
from registry.artifacts import ArtifactRejected, inspect_artifact
from registry.models import ModelVersion
from registry.signatures import MAX_SIGNATURE_BYTES, check_storable, signature_too_large, too_large_reason

log = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("sandbox_child.py")
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_PDEATHSIG = 1
_MAX_FILE_BYTES = 64 * 1024**2  # the most the child may write to one file, its stdout and stderr included
# The most of the child's stdout that is read: its verdict, a line that the signature's size limit keeps far smaller.
_MAX_VERDICT_BYTES = 4 * 1024**2


def validate_stored_artifact(version: ModelVersion) -> dict:
    """The verdict for one version: {"ok": True, ...facts} or {"ok": False, "reason": ...}."""
    with _local_copy(version) as path:
        digest = _sha256(path)
        if digest != version.sha256:
            return {
                "ok": False,
                "reason": f"The stored artifact's SHA-256 is {digest}, not {version.sha256} as uploaded: "
                "storage corrupted it. Upload the version again.",
            }
        try:
            with open(path, "rb") as fh:
                inspect_artifact(
                    fh,
                    max_members=settings.SLIPWAY_ARCHIVE_MAX_MEMBERS,
                    max_uncompressed=settings.SLIPWAY_ARCHIVE_MAX_UNCOMPRESSED_BYTES,
                    test_crc=True,
                )
        except ArtifactRejected as exc:
            return {"ok": False, "reason": str(exc)}
        return run_sandboxed(path, version.format, version.signature or None)


def run_sandboxed(path: str, fmt: str, signature: dict | None, *, child: Path = CHILD) -> dict:
    request = json.dumps(
        {"path": str(path), "format": fmt, "signature": signature, "max_signature_bytes": MAX_SIGNATURE_BYTES}
    )
    timeout = settings.SLIPWAY_VALIDATION_TIMEOUT_S
    with tempfile.TemporaryDirectory(prefix="slipway-sandbox-") as home:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "TMPDIR": home,
            "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0",
            # torch.export.load falls back to full unpickling (sample inputs, pickled
            # weights); this makes every torch.load inside it the restricted one.
            "TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1",
        }
        read_fd, write_fd = os.pipe()  # the child reports which isolation it got
        python = settings.SLIPWAY_VALIDATION_PYTHON or sys.executable
        # Its stdout and stderr are files, not pipes: the model's prints land there too, and
        # communicate() would hold all of them in the worker's memory. RLIMIT_FSIZE caps each file.
        with tempfile.TemporaryFile(dir=home) as stdout, tempfile.TemporaryFile(dir=home) as stderr:
            proc = subprocess.Popen(
                [python, "-I", str(child)],
                stdin=subprocess.PIPE,
                stdout=stdout,
                stderr=stderr,
                cwd=home,
                env=env,
                start_new_session=True,
                close_fds=True,
                pass_fds=(write_fd,),
                preexec_fn=_confine(write_fd, artifact=str(path), child=str(child), home=home),
            )
            os.close(write_fd)
            try:
                proc.communicate(request.encode(), timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                proc.communicate()
                return {
                    "ok": False,
                    "reason": f"Loading and running the model took longer than {timeout:.0f}s. "
                    "Check that the forward pass terminates on small inputs, or ask an administrator "
                    "to raise SLIPWAY_VALIDATION_TIMEOUT_S.",
                }
            finally:
                with os.fdopen(read_fd, "rb") as fh:
                    isolation = json.loads(fh.read() or b"{}")
            if os.fstat(stderr.fileno()).st_size >= _MAX_FILE_BYTES:  # where the model's prints go
                return {
                    "ok": False,
                    "reason": f"The model printed more than {_MAX_FILE_BYTES // 1024**2} MiB while being validated. "
                    "Take the print() calls out of forward() and export it again.",
                }
            if proc.returncode == 0 and os.fstat(stdout.fileno()).st_size > _MAX_VERDICT_BYTES:
                return {  # (a child of before MAX_SIGNATURE_BYTES: its verdict cannot be read whole)
                    "ok": False,
                    "reason": f"The validator's verdict is larger than {_MAX_VERDICT_BYTES // 1024**2} MiB: the "
                    "model's signature (its inputs and outputs) is far too large to serve. Return fewer, larger "
                    "tensors (stack related outputs into one with torch.stack or torch.cat) and export it again.",
                }
            out, err = _tail(stdout, _MAX_VERDICT_BYTES), _tail(stderr, 64 * 1024)
    return _verdict(proc.returncode, out, err, isolation)


def _tail(file, size: int) -> bytes:
    """The last `size` bytes of `file`."""
    file.seek(max(0, os.fstat(file.fileno()).st_size - size))
    return file.read()


def _storable(result: dict) -> dict:
    """A passing verdict, unless it could not be stored: the outputs' names are the model's own, and so is
    the parameter count (a parameter that is an expanded view counts every element it shows)."""
    count = result.get("parameter_count")
    if isinstance(count, int) and not 0 <= count < 2**63:
        return {
            "ok": False,
            "reason": f"The model's parameters count {count} parameters, more than can be recorded: some are "
            "views that repeat a few values (expand). Make them real tensors (.clone()) and export it again.",
        }
    measured = result.get("signature_too_large")  # the child measured it and left it out of its verdict
    if isinstance(measured, dict):
        return {"ok": False, "reason": too_large_reason(measured["inputs"], measured["outputs"], measured["size"])}
    too_large = signature_too_large(result.get("signature"))
    if too_large:
        return {"ok": False, "reason": too_large}
    try:
        check_storable(result.get("signature"), "signature")
    except InvalidInput as exc:
        return {
            "ok": False,
            "reason": f"The signature the model answers with cannot be stored: {exc.message} Rename its outputs "
            "(the keys of the dict forward() returns) and export it again.",
        }
    return result


def _verdict(returncode: int, out: bytes, err: bytes, isolation: dict) -> dict:
    # The verdict is the last line of a child that exited by itself: a child killed part-way (its CPU limit,
    # a crash) has given none, whatever its stdout holds.
    lines = out.decode(errors="replace").strip().splitlines() if returncode == 0 else []
    if lines:
        try:
            result = json.loads(lines[-1])
            result["isolation"] = isolation
            return _storable(result) if result.get("ok") else result
        except json.JSONDecodeError:
            pass
    tail = err.decode(errors="replace").strip()[-600:]
    if returncode < 0:
        sig = signal.Signals(-returncode).name
        limit = settings.SLIPWAY_VALIDATION_MEMORY_BYTES
        return {
            "ok": False,
            "reason": f"The validator was killed by {sig} while loading the model: it probably exceeded its "
            f"memory limit ({limit / 1024**3:.1f} GiB) or CPU-time limit ({settings.SLIPWAY_VALIDATION_CPU_S}s). "
            "Check the model's size, or ask an administrator to raise SLIPWAY_VALIDATION_MEMORY_BYTES.",
        }
    if "MemoryError" in tail or "std::bad_alloc" in tail or "DefaultCPUAllocator" in tail:
        return {
            "ok": False,
            "reason": "The model needs more memory than the validator may use "
            f"({settings.SLIPWAY_VALIDATION_MEMORY_BYTES / 1024**3:.1f} GiB). "
            "Ask an administrator to raise SLIPWAY_VALIDATION_MEMORY_BYTES.",
        }
    return {"ok": False, "reason": f"The validator failed (exit {returncode}): {tail or 'no output'}"}


# What Python and torch read besides their own files. Not all of /proc: another
# process's /proc/<pid>/environ would show the worker's database URL. "/proc/self"
# resolves, in the child, to the child's own directory.
_SYSTEM_READABLE = (
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/proc/self",
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/sys/devices/system/cpu",
    "/sys/fs/cgroup",
    "/dev/urandom",
    "/dev/zero",
)


def _confine(report_fd: int, *, artifact: str, child: str, home: str):
    memory = settings.SLIPWAY_VALIDATION_MEMORY_BYTES
    cpu = settings.SLIPWAY_VALIDATION_CPU_S
    python = settings.SLIPWAY_VALIDATION_PYTHON or sys.executable
    readable = sorted(
        {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(python)), child, artifact}
        | set(_SYSTEM_READABLE)
    )

    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec
        libc = ctypes.CDLL(None, use_errno=True)
        # The child has a session of its own (the timeout kills its group): a worker that dies (killed, OOM)
        # takes it along this way instead, or nothing would enforce the wall-clock limit any more.
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the worker died before that took effect
            os._exit(1)
        isolation = {"network": "namespace", "filesystem": "landlock"}
        if libc.unshare(_CLONE_NEWNET) != 0 and libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
            isolation["network"] = "unavailable"
        libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        if not landlock.restrict(readable, [home, "/dev/null"]):
            isolation["filesystem"] = "unavailable"
        os.write(report_fd, json.dumps(isolation).encode())
        os.close(report_fd)
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
        resource.setrlimit(resource.RLIMIT_FSIZE, (_MAX_FILE_BYTES, _MAX_FILE_BYTES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return preexec


def _kill_group(proc: subprocess.Popen) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _local_copy(version: ModelVersion):
    """A local path to the artifact: the file itself, or a temporary download."""
    storage = version.artifact.storage
    try:
        path = storage.path(version.artifact.name)
    except NotImplementedError:
        path = None
    if path is not None:
        yield path
        return
    with tempfile.NamedTemporaryFile(suffix=Path(version.artifact.name).suffix) as tmp:
        with storage.open(version.artifact.name, "rb") as src:
            shutil.copyfileobj(src, tmp, 1024 * 1024)
        tmp.flush()
        yield tmp.name
