"""What every page's navigation shows about deployments."""

from __future__ import annotations

from functools import cache

from controlplane import access
from controlplane.audit import Actor
from controlplane.models import Role
from deployments.models import ApprovalRequest, ApprovalState


def approvals_waiting(request) -> dict:
    """The number of pending requests the signed-in person could decide, counted only if a page shows it."""

    @cache
    def count() -> int:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return 0
        actor = Actor.from_request(request)
        waiting = access.scope(
            ApprovalRequest.objects.filter(state=ApprovalState.PENDING), actor, role=Role.APPROVER
        ).exclude(requested_by=user)
        return waiting.exclude(decisions__user=user).count()

    return {"approvals_waiting": count}
