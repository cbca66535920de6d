"""Before/after of an audit event as the keys that changed, for people reading the log.

No Django here: it takes the JSON values stored in an event and returns plain rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_MISSING = object()


@dataclass(frozen=True)
class Change:
    key: str  # dotted for nested objects: "settings.replicas"
    kind: str  # "changed", "added" or "removed"
    old: Any = None
    new: Any = None


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested objects as one level of dotted keys; lists, scalars and empty objects are leaves.

    A value that is not an object at all (rare: before/after are objects by convention) is
    keyed by its prefix, or "(value)" at the top.
    """
    if not isinstance(value, dict) or (not value and prefix):
        return {prefix or "(value)": value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def diff(before: Any, after: Any) -> list[Change]:
    """What changed from `before` to `after`, in the order the keys first appear; unchanged keys are left out.

    None on either side (an event that only creates or only removes) makes every key added or removed.
    """
    old = flatten(before) if before is not None else {}
    new = flatten(after) if after is not None else {}
    changes = []
    for key in dict.fromkeys([*old, *new]):
        was, now = old.get(key, _MISSING), new.get(key, _MISSING)
        if was is _MISSING:
            changes.append(Change(key, "added", new=now))
        elif now is _MISSING:
            changes.append(Change(key, "removed", old=was))
        elif was != now or type(was) is not type(now):
            changes.append(Change(key, "changed", old=was, new=now))
    return changes
