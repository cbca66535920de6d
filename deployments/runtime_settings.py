"""Validate the runtime settings a person asks for, before they reach a target.

Targets trust `RuntimeSettings` as given, so every bad value is caught here,
all at once, with one message per field that says what is allowed. Quantities
follow Kubernetes' spelling so the same text works in a manifest and a form.
"""

from __future__ import annotations

import re
from dataclasses import asdict, fields
from decimal import Decimal
from typing import Any

from deployments.targets.base import RuntimeSettings

KNOWN = tuple(f.name for f in fields(RuntimeSettings))

# Whole numbers: (lowest, highest) allowed.
_INT_RANGES = {"replicas": (1, 100), "gpus": (0, 16), "max_batch_size": (1, 4096)}
_MAX_DELAY_MS = 10_000

# [0-9], not \d: Kubernetes takes ASCII digits only.
_CPU = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<milli>m?)")
_MEMORY = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<suffix>[KMGTPE]i|[kMGTPE])?")
_MEMORY_FACTORS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_MEMORY_FACTORS |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
# Less than this is a unit left out ("512" bytes meant "512Mi"): no runtime starts in it.
_MIN_MEMORY = 2**20


class InvalidSettings(ValueError):
    """Every bad field at once; `fields` maps a field name to its messages."""

    def __init__(self, errors: dict[str, list[str]]):
        self.fields = errors
        super().__init__("; ".join(f"{name}: {' '.join(messages)}" for name, messages in errors.items()))


def parse_runtime_settings(data: dict | None, defaults: RuntimeSettings | None = None) -> RuntimeSettings:
    """`data` over `defaults` (or the built-in defaults), validated as a whole.

    A quantity given as "" or None is unset (no request or limit). The merged
    result is checked, so a request is compared with a limit from the defaults too.
    """
    if data is not None and not isinstance(data, dict):
        raise InvalidSettings({"settings": [f"must be an object with the keys {', '.join(KNOWN)}"]})
    data = data or {}
    errors: dict[str, list[str]] = {}
    unknown = sorted(set(data) - set(KNOWN))
    for key in unknown:
        errors[key] = [f"is not a runtime setting; the known ones are {', '.join(KNOWN)}"]
    merged = settings_to_dict(defaults or RuntimeSettings()) | {k: v for k, v in data.items() if k in KNOWN}
    values: dict[str, Any] = {}
    for name, value in merged.items():
        try:
            values[name] = _parse_field(name, value)
        except ValueError as exc:
            errors[name] = [str(exc)]
    for kind, parse in (("cpu", cpu_millicores), ("memory", memory_bytes)):
        request, limit = values.get(f"{kind}_request"), values.get(f"{kind}_limit")
        if request and limit and parse(request) > parse(limit):
            message = f"{request} is more than {kind}_limit {limit}; a request may not exceed its limit"
            errors.setdefault(f"{kind}_request", []).append(message)
    if errors:
        raise InvalidSettings(errors)
    return RuntimeSettings(**values)


def settings_to_dict(settings: RuntimeSettings) -> dict:
    """Plain JSON values; `parse_runtime_settings` reads them back unchanged."""
    return asdict(settings)


def cpu_millicores(text: str) -> int:
    """ "500m" -> 500, "1.5" -> 1500; ValueError otherwise."""
    match = _CPU.fullmatch(text)
    if not match:
        raise ValueError(f'{text!r} is not a CPU amount; use cores or millicores, e.g. "1", "1.5" or "500m"')
    millicores = Decimal(match["number"]) * (1 if match["milli"] else 1000)
    if millicores == 0:
        raise ValueError(f"{text!r} is no CPU at all; leave it empty for none")
    if millicores != millicores.to_integral_value():
        raise ValueError(f"{text!r} is finer than 1m (a thousandth of a core), the smallest step Kubernetes takes")
    return int(millicores)


def memory_bytes(text: str) -> Decimal:
    """ "512Mi" -> 536870912, "1G" -> 10**9, "1048576" -> 1048576; ValueError otherwise."""
    match = _MEMORY.fullmatch(text)
    if not match:
        raise ValueError(
            f"{text!r} is not a memory amount; use bytes with an optional suffix Ki, Mi, Gi, Ti "
            f'(powers of 1024) or k, M, G, T (powers of 1000), e.g. "512Mi" or "1Gi"'
        )
    amount = Decimal(match["number"]) * _MEMORY_FACTORS[match["suffix"]]
    if amount == 0:
        raise ValueError(f"{text!r} is no memory at all; leave it empty for none")
    if amount < _MIN_MEMORY:
        raise ValueError(
            f'{text!r} is less than 1Mi, too little for the runtime; did you leave out a unit, e.g. "512Mi"?'
        )
    return amount


def _parse_field(name: str, value: Any) -> Any:
    if name in _INT_RANGES:
        low, high = _INT_RANGES[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be a whole number from {low} to {high}, not {value!r}")
        return value
    if name == "max_delay_ms":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= _MAX_DELAY_MS:
            raise ValueError(f"must be a number of milliseconds from 0 to {_MAX_DELAY_MS}, not {value!r}")
        return float(value)
    return _parse_quantity(name, value)


def _parse_quantity(name: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)  # `cpu: 1` as a YAML or JSON number, as Kubernetes takes it
    if not isinstance(value, str):
        example = '"500m"' if name.startswith("cpu") else '"512Mi"'
        raise ValueError(f"must be a quantity as text, e.g. {example}, or empty for none")
    text = value.strip()
    if text:
        (cpu_millicores if name.startswith("cpu") else memory_bytes)(text)
    return text
