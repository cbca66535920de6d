"""Browser views for approval requests: the list approvers work from, and one request to decide.

Decisions go through deployments.approvals.decide, which checks the role, refuses
self-approval, a second decision and an expired request, and writes the audit event.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from controlplane import access
from controlplane.audit import Actor
from controlplane.errors import ServiceError
from controlplane.web import paginate, refuse
from deployments import approvals
from deployments.models import ApprovalRequest, ApprovalState

STATES = [("pending", "Pending"), ("", "All")] + [(s, s.label.capitalize()) for s in ApprovalState if s != "pending"]


def _visible(actor: Actor):
    return access.scope(ApprovalRequest.objects, actor).select_related(
        "environment", "rollout__deployment__model", "requested_by"
    )


@login_required
@require_GET
def approval_list(request):
    actor = Actor.from_request(request)
    state = request.GET.get("state", "pending")
    requests = _visible(actor).prefetch_related("decisions").order_by("expires_at" if state == "pending" else "-pk")
    if state:
        requests = requests.filter(state=state)
    page = paginate(request, requests)
    for item in page:
        item.yours = approvals.could_decide(item, actor)
    return render(request, "deployments/approval_list.html", {"page": page, "state": state, "states": STATES})


def _detail_context(request, pk: int) -> dict:
    actor = Actor.from_request(request)
    item = get_object_or_404(_visible(actor).prefetch_related("decisions"), pk=pk)
    return {
        "item": item,
        "change": item.change,
        "previous": item.change.get("previous") or {},
        "settings_changes": _settings_changes(item.change),
        "is_requester": item.requested_by_id == request.user.pk,
        "decided": any(d.user_id == request.user.pk for d in item.decisions.all()),
        "may_decide": approvals.could_decide(item, actor),
    }


def _settings_changes(change: dict) -> list[dict]:
    """The release settings against what serves now, key by key."""
    new = change.get("settings") or {}
    old = (change.get("previous") or {}).get("settings") or {}
    rows = []
    for key in sorted(set(new) | set(old)):
        if new.get(key) != old.get(key) or key not in old:
            rows.append({"key": key, "old": old.get(key), "new": new.get(key), "added": key not in old})
    return rows


@login_required
@require_GET
def approval_detail(request, pk):
    return render(request, "deployments/approval_detail.html", _detail_context(request, pk))


@login_required
@require_POST
def approval_decide(request, pk, decision):
    actor = Actor.from_request(request)
    item = get_object_or_404(_visible(actor), pk=pk)
    try:
        approvals.decide(item, actor=actor, decision=decision, comment=request.POST.get("comment", ""))
    except ServiceError as exc:
        context = {**_detail_context(request, pk), "form": request.POST}
        template = "deployments/approval_detail.html"
        return refuse(request, exc, f"approval.{decision}", template, context, environment=item.environment.name)
    return redirect("approval-detail", pk=pk)
