"""Configuration: parsed once at start-up from the command line and RUNTIME_* variables.

A command-line option wins over its environment variable, which wins over the default.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")
MAX_THREADS = 1024  # torch intra-op threads: more than any machine has cores


@dataclass(frozen=True)
class Config:
    model_path: str
    model_name: str
    model_version: str = "1"
    sha256: str | None = None
    signature: dict | None = None
    host: str = "0.0.0.0"  # noqa: S104 - a server in a container listens on every interface
    port: int = 8080
    device: str = "auto"
    dtype: str = "float32"
    max_batch_size: int = 16
    max_delay_ms: float = 2.0
    max_queue: int = 1024
    request_timeout_s: float = 30.0
    max_body_bytes: int = 64 * 1024 * 1024
    drain_timeout_s: float = 25.0
    num_threads: int = 0
    log_level: str = "info"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _num_threads(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_THREADS:  # torch dies of SIGSEGV, without a word, when asked for 99999
        raise ValueError(f"must be between 0 (torch's default) and {MAX_THREADS}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses NaN
        raise ValueError("must be 0 or more")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be more than 0")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


def _sha256(text: str) -> str:
    value = text.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError("must be 64 hexadecimal digits")
    return value


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def _signature(text: str) -> dict:
    """JSON text, or @PATH to a JSON file: {"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}."""
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as fh:
            text = fh.read()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict) or not isinstance(value.get("inputs"), list) or not value["inputs"]:
        raise ValueError('must be an object with a non-empty list "inputs"')
    for where in ("inputs", "outputs"):
        for index, spec in enumerate(value.get(where) or []):
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise ValueError(f"{where}[{index}] must be an object with a name, datatype and shape")
            shape = spec.get("shape")
            if not isinstance(shape, list) or not all(isinstance(d, int) and (d == -1 or d > 0) for d in shape):
                raise ValueError(f"{where}[{index}].shape must be a list of positive integers or -1")
            if not isinstance(spec.get("datatype"), str):
                raise ValueError(f"{where}[{index}].datatype must be a string such as FP32")
    return value


# (option, Config field, environment variable, parser, help)
OPTIONS: tuple[tuple[str, str, str, Callable[[str], Any], str], ...] = (
    ("--model", "model_path", "RUNTIME_MODEL_PATH", str, "TorchScript or torch.export (.pt2) archive"),
    ("--name", "model_name", "RUNTIME_MODEL_NAME", str, "the model's name in the protocol's URLs"),
    ("--version", "model_version", "RUNTIME_MODEL_VERSION", str, "the model version served (default 1)"),
    ("--sha256", "sha256", "RUNTIME_MODEL_SHA256", _sha256, "refuse to start unless the file has this SHA-256"),
    ("--signature", "signature", "RUNTIME_SIGNATURE", _signature, "inputs/outputs as JSON, or @FILE"),
    ("--host", "host", "RUNTIME_HOST", str, "address to listen on (default 0.0.0.0)"),
    ("--port", "port", "RUNTIME_PORT", _port, "port to listen on (default 8080)"),
    ("--device", "device", "RUNTIME_DEVICE", _choice(DEVICES), "auto picks CUDA when present"),
    (
        "--dtype",
        "dtype",
        "RUNTIME_DTYPE",
        _choice(DTYPES),
        "compute the model's FP32 weights and inputs in this precision; FP64, FP16 and BF16 ones keep theirs "
        "(default float32)",
    ),
    ("--max-batch-size", "max_batch_size", "RUNTIME_MAX_BATCH_SIZE", _positive_int, "rows per forward pass"),
    ("--max-delay-ms", "max_delay_ms", "RUNTIME_MAX_DELAY_MS", _non_negative_float, "how long a batch may wait"),
    ("--max-queue", "max_queue", "RUNTIME_MAX_QUEUE", _positive_int, "queued requests before answering 503"),
    ("--request-timeout-s", "request_timeout_s", "RUNTIME_REQUEST_TIMEOUT_S", _positive_float, "then 504"),
    ("--max-body-bytes", "max_body_bytes", "RUNTIME_MAX_BODY_BYTES", _positive_int, "larger bodies get 413"),
    ("--drain-timeout-s", "drain_timeout_s", "RUNTIME_DRAIN_TIMEOUT_S", _non_negative_float, "SIGTERM grace"),
    ("--num-threads", "num_threads", "RUNTIME_NUM_THREADS", _num_threads, "torch intra-op threads (0: torch's)"),
    ("--log-level", "log_level", "RUNTIME_LOG_LEVEL", _choice(("debug", "info", "warning", "error")), "logging"),
)


def parse_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Parse the command line and environment; exits with status 2 and a message on a bad value."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m inference_runtime",
        description="Serve one PyTorch model over the Open Inference Protocol v2 (REST). "
        "Every option can also be set through the environment variable shown.",
    )
    for option, dest, env, _, help_text in OPTIONS:
        parser.add_argument(option, dest=dest, default=None, help=f"{help_text} [{env}]")
    args = parser.parse_args(argv)

    values: dict[str, Any] = {}
    for option, dest, env, parse, _ in OPTIONS:
        raw, source = getattr(args, dest), option
        if raw is None and environ.get(env, "") != "":
            raw, source = environ[env], env
        if raw is None:
            continue
        try:
            values[dest] = parse(raw)
        except (ValueError, OSError) as exc:
            parser.error(f"{source} {raw!r}: {exc}")
    for dest, option, env in (
        ("model_path", "--model", "RUNTIME_MODEL_PATH"),
        ("model_name", "--name", "RUNTIME_MODEL_NAME"),
    ):
        if not values.get(dest):
            parser.error(f"{option} (or {env}) is required")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", values["model_name"]):
        parser.error(f"--name {values['model_name']!r}: use letters, digits, '.', '_' and '-' only")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", values.get("model_version", "1")):
        parser.error(f"--version {values['model_version']!r}: use letters, digits, '.', '_' and '-' only")
    return Config(**values)
