"""Template filters shared by every app's pages."""

from __future__ import annotations

import json

from django import template

from controlplane.changes import Change, diff

register = template.Library()


@register.filter
def as_json(value) -> str:
    """A JSON value as people read it in the API, not as Python's repr."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


@register.filter
def as_text(value) -> str:
    """Strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else as_json(value)


@register.filter
def is_url(value) -> bool:
    return isinstance(value, str) and value.startswith(("https://", "http://"))


@register.filter
def audit_changes(event) -> list[Change]:
    """An audit event's before/after as changed, added and removed keys."""
    return diff(event.before, event.after)
