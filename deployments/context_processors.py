"""What every page's navigation shows about deployments."""

from __future__ import annotations

from functools import cache

from controlplane.audit import Actor
from deployments.approvals import waiting_count


def approvals_waiting(request) -> dict:
    """The number of pending requests the signed-in person could decide, counted only if a page shows it."""

    @cache
    def count() -> int:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return 0
        return waiting_count(Actor.from_request(request))

    return {"approvals_waiting": count}
