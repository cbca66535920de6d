"""What every page's navigation shows about deployments."""

from __future__ import annotations

from functools import cache

from django.db import connection

from controlplane import access
from controlplane.audit import Actor
from controlplane.models import Role
from deployments.models import ApprovalDecision, ApprovalRequest, ApprovalState


def approvals_waiting(request) -> dict:
    """The number of pending requests the signed-in person could decide, counted only if a page shows it."""

    @cache
    def count() -> int:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return 0
        return waiting_count(Actor.from_request(request))

    return {"approvals_waiting": count}


def waiting_count(actor: Actor) -> int:
    """Pending requests in environments where `actor` approves that they neither asked for nor decided.

    Every page runs this, so the SQL is written out: the ORM took ~1 ms to build it (the exclusion
    across decisions is a subquery), three times as long as the query itself.
    """
    environments = access.environment_ids(actor, Role.APPROVER)
    if actor.user is None or (environments is not None and not environments):
        return 0
    requests, decisions = _table(ApprovalRequest), _table(ApprovalDecision)
    sql = (
        f"SELECT COUNT(*) FROM {requests} r WHERE r.state = %s"  # noqa: S608 (table names only; values are parameters)
        " AND (r.requested_by_id IS NULL OR r.requested_by_id <> %s)"
        f" AND NOT EXISTS (SELECT 1 FROM {decisions} d WHERE d.request_id = r.id AND d.user_id = %s)"
    )
    params = [ApprovalState.PENDING.value, actor.user.pk, actor.user.pk]
    if environments is not None:
        sql += f" AND r.environment_id IN ({', '.join(['%s'] * len(environments))})"
        params += sorted(environments)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


def _table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)
