"""Small typed readers for settings that come from the environment.

Each reader fails loudly on a value it cannot parse, naming the variable, so a
typo in a deployment's configuration stops start-up instead of being ignored.
`NAME_FILE` is honoured for secrets (Docker and Kubernetes mount them as files).
"""

from __future__ import annotations

import json
import os
import re

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None) -> str | None:
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            with open(file_path, encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={file_path!r} cannot be read: {exc}") from exc
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean: use true or false.")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer.") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}.")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number.") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}.")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_json_object(name: str, default: dict | None = None) -> dict:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return dict(default or {})
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ImproperlyConfigured(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ImproperlyConfigured(f"{name} must be a JSON object.")
    return value


def env_port_range(name: str, default: tuple[int, int]) -> tuple[int, int]:
    """A range of TCP ports written FIRST-LAST, e.g. 8100-8999 (both ends included)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", raw)
    if not match or not 1 <= int(match[1]) <= int(match[2]) <= 65535:
        raise ImproperlyConfigured(f"{name}={raw!r} must be a port range FIRST-LAST within 1-65535, e.g. 8100-8999.")
    return int(match[1]), int(match[2])


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={raw!r} must be one of: {', '.join(choices)}.")
    return value


_RATE = re.compile(r"\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*", re.IGNORECASE)


def env_rate(name: str, default: str | None) -> str | None:
    """A request rate such as 600/min (per s, min, hour or day); `off` turns the limit off (None)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    if raw.strip().lower() == "off":
        return None
    match = _RATE.fullmatch(raw)
    if not match or int(match[1]) < 1:
        raise ImproperlyConfigured(f"{name}={raw!r} must be a rate like 600/min (per s, min, hour or day), or off.")
    return f"{int(match[1])}/{match[2].lower()}"


def cache_from_url(name: str, default: str) -> dict:
    """Django's CACHES entry for a URL: redis://host:6379/1 (rediss://, unix://) or locmem:// (one per process)."""
    url = (os.environ.get(name) or "").strip() or default
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        return {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url, "KEY_PREFIX": "slipway"}
    if scheme == "locmem":
        return {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": url.split("://", 1)[1]}
    given = f"the scheme {scheme + '://'!r}" if scheme else "no scheme://"  # never the URL: it may hold a password
    raise ImproperlyConfigured(
        f"{name} is not a cache URL Slipway knows ({given}): use redis://host:6379/1 (shared by every process) "
        "or locmem:// (one cache per process)."
    )


def database_from_url(name: str, default: str, **options) -> dict:
    """Django's DATABASES entry for the URL in `name`; an error never repeats the URL, which holds a password."""
    try:
        return dj_database_url.parse(env_str(name) or default, **options)
    except ValueError as exc:
        reason = str(exc).split(". ", 1)[0].rstrip(".")
        raise ImproperlyConfigured(
            f"{name} is not a database URL Slipway can use ({reason}): give postgres://USER:PASSWORD@HOST:5432/NAME, "
            "or leave it unset for SQLite under the var directory."
        ) from None
