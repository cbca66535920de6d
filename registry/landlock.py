"""Landlock: let a process see only the files it needs (Linux 5.13+, no privileges needed).

Used by the validator child before it executes: it may read the Python install,
system libraries and its one artifact, and write only its temporary home. The
worker's own files (the secret key, an SQLite database, other artifacts) are out
of its reach. Where the kernel has no Landlock, `restrict` returns False and the
caller records that the filesystem was not confined.
"""

from __future__ import annotations

import ctypes
import os

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # x86-64 and arm64 alike
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
READ = EXECUTE | READ_FILE | READ_DIR


def _handled(abi: int) -> int:
    # ABI 1 knows bits 0-12, ABI 2 adds REFER (13), ABI 3 TRUNCATE (14), ABI 5 IOCTL_DEV (15).
    bits = 13 + (abi >= 2) + (abi >= 3) + (abi >= 5)
    return (1 << bits) - 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def restrict(read_only: list[str], read_write: list[str]) -> bool:
    """Confine this process (and what it executes) to these paths. False if unsupported."""
    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(_SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    if abi < 1:
        return False
    handled = _handled(abi)
    attr = _RulesetAttr(handled)
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    if ruleset < 0:
        return False
    try:
        for paths, access in ((read_only, READ), (read_write, handled)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue  # a path this system does not have
                try:
                    allowed = access if os.path.isdir(path) else access & (EXECUTE | READ_FILE | WRITE_FILE)
                    rule = _PathBeneathAttr(allowed & handled, fd)
                    if libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
                        return False
                finally:
                    os.close(fd)
        return libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0) == 0
    finally:
        os.close(ruleset)
