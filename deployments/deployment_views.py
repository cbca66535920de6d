"""Browser views for environments, deployments, rollouts and their history.

Every change goes through deployments.services; these views read only the
database. The live panel of a deployment is polled twice a second while a
rollout is active, so it is built from a fixed handful of queries and never
asks the target anything: the worker stores the target's status in the rollout.
"""

from __future__ import annotations

from datetime import UTC

from django.contrib.auth.decorators import login_required
from django.db.models import Count, OuterRef, Q, Subquery
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from controlplane import access, roles
from controlplane.audit import Actor
from controlplane.errors import InvalidInput, ServiceError
from controlplane.models import Role, RoleBinding
from controlplane.web import HTMX_STOP_POLLING, paginate, polled, refuse
from deployments import forms, ledger, services
from deployments.models import (
    ROLLOUT_ACTIVE,
    ApprovalRequest,
    ApprovalState,
    Decision,
    Deployment,
    Environment,
    Release,
    Rollout,
    RolloutState,
    TargetKind,
    newest_rollout_status,
)
from deployments.plans import describe
from registry.models import ModelVersion

EVENTS_SHOWN = 50  # the live panel shows the newest events; the API has them all
ROLLBACK_CHOICES = 50
LIVE_TEMPLATE = "deployments/htmx/deployment_live.html"


# --- Environments --------------------------------------------------------------------
@login_required
@require_http_methods(["GET", "POST"])
def environment_list(request):
    if request.method == "POST":
        try:
            services.create_environment(actor=Actor.from_request(request), **forms.environment_args(request.POST))
        except ServiceError as exc:
            return refuse(
                request, exc, "environment.create", "deployments/environment_list.html", _environments_context(request)
            )
        return redirect("environment-list")
    return render(request, "deployments/environment_list.html", _environments_context(request))


def _environments_context(request) -> dict:
    actor = Actor.from_request(request)
    environments = (
        access.scope(Environment.objects, actor, field="pk")
        .select_related("promotes_from")
        .annotate(deployment_count=Count("deployments"))
        .order_by("created_at", "name")
    )
    return {
        "can_create": access.grants(actor).environment_ids(access.ADMIN_RANK) is None,
        "environments": environments,
        "targets": TargetKind.choices,
        "form": request.POST,
        "plan_placeholder": '{"strategy": "canary", "steps": [{"set_weight": 20}, {"pause": {"duration": "1m"}}]}',
    }


def _environment(request, name: str) -> Environment:
    visible = access.scope(Environment.objects, Actor.from_request(request), field="pk")
    return get_object_or_404(visible.select_related("promotes_from"), name=name)


def _environment_context(request, environment: Environment) -> dict:
    actor = Actor.from_request(request)
    bindings = roles.visible_bindings(actor).filter(Q(environment=environment) | Q(environment__isnull=True))
    return {
        "environment": environment,
        "at_text": request.GET.get("at", ""),
        "your_role": access.role_in(actor, environment),
        "may_manage": access.can(actor, Role.ADMIN, environment),
        "bindings": bindings.order_by("environment_id", "role", "user__username", "group__name"),
        "roles": Role.choices,
    }


@login_required
@require_GET
def environment_detail(request, name):
    """An environment, who may do what there, and what served in it at any instant (the ledger)."""
    environment = _environment(request, name)
    context = _environment_context(request, environment)
    try:
        at = ledger.parse_instant(request.GET.get("at"))
    except InvalidInput as exc:
        return render(request, "deployments/environment_detail.html", {**context, "error": exc.message}, status=400)
    page = paginate(request, ledger.environment_deployments(environment).values_list("pk", flat=True))
    deployments = Deployment.objects.filter(pk__in=list(page)).order_by("model__name", "pk")
    answer = ledger.environment_serving(environment, at, deployments)
    at_input = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return render(
        request,
        "deployments/environment_detail.html",
        {**context, "answer": answer, "page": page, "at": at, "at_input": at_input},
    )


def _environment_refused(request, environment: Environment, exc: ServiceError, action: str, **extra):
    context = {**_environment_context(request, environment), "form": request.POST, **extra}
    return refuse(request, exc, action, "deployments/environment_detail.html", context, environment=environment.name)


@login_required
@require_POST
def environment_protection(request, name):
    """Change how many approvals a rollout there needs, how long a request waits, and whether pauses need them."""
    environment = _environment(request, name)
    try:
        services.update_environment(
            environment, actor=Actor.from_request(request), **forms.protection_args(request.POST)
        )
    except ServiceError as exc:
        return _environment_refused(request, environment, exc, "environment.update", protection_error=True)
    return redirect(f"{reverse('environment-detail', args=[name])}#protection")


@login_required
@require_POST
def environment_grant(request, name):
    environment = _environment(request, name)
    principal = request.POST.get("principal", "").strip()
    kind = "group" if request.POST.get("kind") == "group" else "user"
    try:
        roles.grant_role(
            environment, request.POST.get("role", ""), actor=Actor.from_request(request), **{kind: principal}
        )
    except ServiceError as exc:
        return _environment_refused(request, environment, exc, "role.grant", access_error=True)
    return redirect(f"{reverse('environment-detail', args=[name])}#access")


@login_required
@require_POST
def environment_revoke(request, name, pk):
    environment = _environment(request, name)
    binding = get_object_or_404(RoleBinding.objects.select_related("environment", "user", "group"), pk=pk)
    if binding.environment_id != environment.pk:
        raise Http404("No such role in this environment.")
    try:
        roles.revoke_role(binding, actor=Actor.from_request(request))
    except ServiceError as exc:
        return _environment_refused(request, environment, exc, "role.revoke", access_error=True)
    return redirect(f"{reverse('environment-detail', args=[name])}#access")


# --- Deploying a version (the form is on the version's page: templatetags/deploy.py) ---------
@login_required
@require_POST
def deploy(request, name, version):
    version = get_object_or_404(
        ModelVersion.objects.select_related("model", "uploaded_by"), model__name=name, version=version
    )
    try:
        args = forms.deploy_args(request.POST)
        deployment, _rollout, _created = services.deploy(
            name, args.pop("environment"), version.version, actor=Actor.from_request(request), **args
        )
    except ServiceError as exc:
        context = {"version": version, "model": version.model, "deploy_form": request.POST}
        return refuse(request, exc, "deployment.deploy", "registry/version_detail.html", context)
    return redirect("deployment-detail", pk=deployment.pk)


# --- Deployments ---------------------------------------------------------------------
def _with_active_rollout(actor: Actor):
    """The deployments the actor may see, with their active rollout's state and their newest rollout's status."""
    active = Rollout.objects.filter(deployment=OuterRef("pk"), state__in=ROLLOUT_ACTIVE)
    return (
        access.scope(Deployment.objects, actor)
        .select_related("model", "environment", "current_release__model_version")
        .annotate(active_state=Subquery(active.values("state")[:1]), newest_status=newest_rollout_status())
    )


@login_required
@require_GET
def deployment_list(request):
    environment = request.GET.get("environment", "")
    actor = Actor.from_request(request)
    deployments = _with_active_rollout(actor).order_by("model__name", "environment__created_at", "pk")
    if environment:
        deployments = deployments.filter(environment__name=environment)
    page = paginate(request, deployments)
    for deployment in page:
        deployment.state = deployment.active_state or deployment.idle_state(deployment.newest_status)
        deployment.endpoint = deployment.shown_endpoint(deployment.state)  # only shown, never saved
    environments = (
        access.scope(Environment.objects, actor, field="pk")
        .order_by("created_at", "name")
        .values_list("name", flat=True)
    )
    return render(
        request,
        "deployments/deployment_list.html",
        {"page": page, "environments": environments, "environment": environment},
    )


def live_context(request, pk: int) -> dict:
    """Everything the live panel shows, in a handful of queries, whatever the number of events or releases."""
    actor = Actor.from_request(request)
    # The rollout before the deployment: a rollout that ends commits both rows at once, so a rollout read
    # as ended comes with a deployment that already serves its release. (Read the other way round, a
    # rollout ending in between showed "release 3 serves all traffic" under "Serving release 2", and the
    # panel, no longer active, stopped refreshing.)
    rollout = (
        Rollout.objects.filter(deployment_id=pk)
        .select_related("release__model_version", "release__source", "previous_release__model_version", "requested_by")
        .order_by("-created_at", "-pk")
        .first()
    )  # the newest: the active one when there is one, since only one may be active and none can start meanwhile
    deployment = get_object_or_404(
        access.scope(Deployment.objects, actor).select_related(
            "model", "environment", "current_release__model_version", "warm_release__model_version"
        ),
        pk=pk,
    )
    role = access.role_in(actor, deployment.environment)
    may_deploy = access.can(actor, Role.DEPLOYER, deployment.environment)
    active = rollout is not None and not rollout.is_terminal
    next_environments = []
    if deployment.current_release_id and not active:
        next_environments = [
            env.name
            for env in Environment.objects.filter(promotes_from=deployment.environment_id).order_by("name")
            if access.can(actor, Role.DEPLOYER, env)
        ]
    rollback_choices = []
    if (
        may_deploy and not active and deployment.latest_release > 1
    ):  # a rollback is refused while a rollout is active anyway
        rollback_choices = list(
            deployment.releases.filter(rollout__state=RolloutState.SUCCEEDED)
            .exclude(pk=deployment.current_release_id)
            .select_related("model_version")
            .order_by("-number")[:ROLLBACK_CHOICES]
        )
    warm = deployment.warm_until is not None and deployment.warm_until > timezone.now()
    # Idle, the newest rollout's status is the target's as the sweeper last saw it (local target).
    idle_state = None if active else deployment.idle_state(rollout.status if rollout else None)
    context = {
        "deployment": deployment,
        "idle_state": idle_state,
        "rollout": rollout,
        "active": active,
        "your_role": role,
        "may_deploy": may_deploy,
        "warm_release": deployment.warm_release if warm and idle_state != "stopped" else None,  # stopped: none runs
        "next_environments": next_environments,
        "rollback_choices": rollback_choices,
        "stamp": _stamp(
            rollout.pk if rollout else None,
            rollout.revision if rollout else None,
            deployment.pinned,
            deployment.current_release_id,
        ),
    }
    if rollout is not None:
        context.update(_rollout_context(rollout, may_deploy))
    return context


def _stamp(rollout_id, revision, pinned, current_release_id) -> str:
    """Changes whenever what the idle panel shows changes: a new rollout, a pin, a new release serving."""
    return f"{rollout_id or 0}.{revision or 0}.{int(pinned)}.{current_release_id or 0}"


def _rollout_context(rollout: Rollout, may_deploy: bool) -> dict:
    newest = list(rollout.events.order_by("-at", "-pk")[: EVENTS_SHOWN + 1])
    state = rollout.state
    steps = []
    last = len(rollout.steps) - 1
    for index, step in enumerate(rollout.steps):
        # "Promote now" went from the step it was on straight to all the traffic: the plan's last step, done.
        finished = index == last and state == RolloutState.SUCCEEDED
        if rollout.skip_steps and rollout.step_index <= index and not finished:
            where = "skipped"
        elif state == RolloutState.SUCCEEDED or index < rollout.step_index:
            where = "done"
        elif index == rollout.step_index and state in (RolloutState.PROGRESSING, RolloutState.PAUSED):
            where = "current"
        else:
            where = "todo"
        steps.append({"number": index + 1, "text": describe(step), "where": where})
    # The target reports by slot: a release's own number, unless it took over a warm release's processes.
    status = rollout.status or {}
    weights = status.get("weights", {})
    known = {str(rollout.release.slot): (f"release {rollout.release.number}", "new")}
    if rollout.previous_release:
        known.setdefault(str(rollout.previous_release.slot), (f"release {rollout.previous_release.number}", "previous"))
    releases, warnings = [], []
    for slot, facts in status.get("releases", {}).items():
        name, role = known.get(slot, (f"release {slot}", ""))
        releases.append({"name": name, "role": role, "weight": weights.get(slot), **facts})
        warnings += [f"{name.capitalize()}: {warning}" for warning in facts.get("warnings") or []]
        if facts.get("failed"):
            warnings.append(f"{name.capitalize()} failed: {facts['failed']}")
    approval = None
    if state in (RolloutState.AWAITING_APPROVAL, RolloutState.PAUSED):
        approval = (
            ApprovalRequest.objects.filter(rollout=rollout, state=ApprovalState.PENDING)
            .annotate(approvals=Count("decisions", filter=Q(decisions__decision=Decision.APPROVE)))
            .first()
        )
    return {
        "approval": approval,
        "events": newest[:EVENTS_SHOWN][::-1],  # oldest first: the timeline reads downwards
        "earlier_events": len(newest) > EVENTS_SHOWN,
        "steps": steps,
        "step_number": min(rollout.step_index + 1, len(rollout.steps)),
        "step_text": describe(rollout.current_step),
        "old_weight": 100 - rollout.weight if rollout.previous_release else None,
        "releases": releases,
        "warnings": warnings,
        "analysis": rollout.analysis,
        "checks": [_check(check) for check in (rollout.analysis or {}).get("checks", [])],
        "can": {
            "pause": may_deploy and state in services.PAUSABLE,
            "resume": may_deploy and state in services.RESUMABLE and not rollout.pause_reason.startswith("Waiting for"),
            "abort": may_deploy and state in services.ABORTABLE,
            "promote": may_deploy and state in services.PROMOTABLE_NOW,
        },
    }


def _check(check: dict) -> dict:
    """An analysis check with its measured value and threshold in the units people read."""
    unit = check.get("unit", "")
    return {
        **check,
        "measured_text": _amount(check.get("measured"), unit),
        "threshold_text": _amount(check.get("threshold"), unit),
    }


def _amount(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "ratio":
        return f"{value * 100:.3g}%"
    if unit == "ms":
        return f"{value:.1f} ms" if value < 10 else f"{value:.0f} ms"
    return f"{value:g} {unit}".strip()


def _live(request, pk: int, *, status: int | None = None, **extra):
    context = {**live_context(request, pk), **extra}
    if status is None:
        status = 200 if context["active"] else HTMX_STOP_POLLING
    return render(request, LIVE_TEMPLATE, context, status=status)


def _detail_context(request, pk: int, **extra) -> dict:
    return {**live_context(request, pk), "form": request.POST, **extra}


@login_required
@require_GET
def deployment_detail(request, pk):
    return render(request, "deployments/deployment_detail.html", _detail_context(request, pk))


@polled
@login_required
@require_GET
def deployment_live(request, pk):
    """The live panel: 200 while a rollout is active (keep polling), 286 once none is."""
    return _live(request, pk)


@polled
@login_required
@require_GET
def deployment_watch(request, pk):
    """The idle page's slow poll: 204 while nothing changed, else the live panel (which polls again if active)."""
    latest = Rollout.objects.filter(deployment=OuterRef("pk")).order_by("-created_at", "-pk")
    row = (
        access.scope(Deployment.objects, Actor.from_request(request))
        .filter(pk=pk)
        .annotate(rollout_id=Subquery(latest.values("pk")[:1]), revision=Subquery(latest.values("revision")[:1]))
        .values_list("rollout_id", "revision", "pinned", "current_release_id")
        .first()
    )
    if row is None:
        return HttpResponse(status=404)
    if _stamp(*row) == request.GET.get("stamp"):
        return HttpResponse(status=204)
    return _live(request, pk, status=200)


def _deployment(request, pk) -> Deployment:
    visible = access.scope(Deployment.objects, Actor.from_request(request))
    return get_object_or_404(visible.select_related("model", "environment", "current_release"), pk=pk)


@login_required
@require_POST
def promote(request, pk):
    deployment = _deployment(request, pk)
    try:
        downstream, _rollout, _created = services.promote(
            deployment,
            actor=Actor.from_request(request),
            environment=request.POST.get("environment") or None,
            reason=request.POST.get("reason", "").strip(),
        )
    except ServiceError as exc:
        context = _detail_context(request, pk)
        return refuse(
            request,
            exc,
            "deployment.promote",
            "deployments/deployment_detail.html",
            context,
            environment=deployment.environment.name,
        )
    return redirect("deployment-detail", pk=downstream.pk)


@login_required
@require_POST
def rollback(request, pk):
    deployment = _deployment(request, pk)
    try:
        to_release = _release_number(request.POST.get("to_release", ""))
        services.rollback(
            deployment, actor=Actor.from_request(request), reason=request.POST.get("reason", ""), to_release=to_release
        )
    except ServiceError as exc:
        context = _detail_context(request, pk, rollback_open=True)
        template = "deployments/deployment_detail.html"
        return refuse(request, exc, "deployment.rollback", template, context, environment=deployment.environment.name)
    return redirect("deployment-detail", pk=pk)


def _release_number(text: str) -> int | None:
    if not text:
        return None
    if not text.isdigit():
        raise InvalidInput(f"{text!r} is not a release number.", fields={"to_release": ["not a number"]})
    return int(text)


@login_required
@require_POST
def unpin(request, pk):
    deployment = _deployment(request, pk)
    deployment, was_pinned = services.unpin(deployment, actor=Actor.from_request(request))
    if request.htmx:
        notice = f"Unpinned: {deployment} takes promotions again." if was_pinned else f"{deployment} was not pinned."
        return _live(request, pk, status=200, notice=notice)
    return redirect("deployment-detail", pk=pk)


# --- A person's hand on the rollout ---------------------------------------------------
ROLLOUT_ACTIONS = {
    "pause": services.pause_rollout,
    "resume": services.resume_rollout,
    "abort": services.abort_rollout,
    "promote": services.promote_rollout_now,
}


@login_required
@require_POST
def rollout_action(request, pk: str, verb: str):
    """Pause, resume, abort or promote now; answers with the live panel, re-rendered at once."""
    visible = access.scope(Rollout.objects, Actor.from_request(request), field="deployment__environment")
    rollout = get_object_or_404(visible.select_related("deployment__environment"), pk=pk)
    try:
        rollout = ROLLOUT_ACTIONS[verb](rollout, actor=Actor.from_request(request))
    except ServiceError as exc:
        where = rollout.deployment.environment.name
        if request.htmx:
            context = live_context(request, rollout.deployment_id)
            return refuse(request, exc, f"rollout.{verb}", LIVE_TEMPLATE, context, environment=where)
        context = _detail_context(request, rollout.deployment_id)
        template = "deployments/deployment_detail.html"
        return refuse(request, exc, f"rollout.{verb}", template, context, environment=where)
    if request.htmx:
        return _live(request, rollout.deployment_id, status=200, notice=_acted(verb, rollout))
    return redirect("deployment-detail", pk=rollout.deployment_id)


def _acted(verb: str, rollout: Rollout) -> str:
    """What the action did, as the person who clicked reads it."""
    if verb == "pause":
        return "Paused: traffic stays as it is until you resume."
    if verb == "resume":
        return "Resumed."
    if verb == "promote":
        return "Promoting now: the remaining steps are skipped and all traffic moves to the new release."
    if rollout.state == RolloutState.ABORTED:
        return "Aborted before anything changed on the target."
    if rollout.previous_release_id:
        return "Aborting: the previous release gets all traffic back, then the new one is removed."
    return "Aborting: the new release is being removed."


# --- History -------------------------------------------------------------------------
@login_required
@require_GET
def deployment_history(request, pk):
    visible = access.scope(Deployment.objects, Actor.from_request(request))
    deployment = get_object_or_404(visible.select_related("model", "environment"), pk=pk)
    releases = Release.objects.filter(deployment=deployment).select_related(
        "model_version", "source__deployment__environment", "created_by", "rollout"
    )
    page = paginate(request, releases.order_by("-number"), 25)
    for release in page:
        release.outcome = getattr(release, "rollout", None)  # every release has one; None keeps the page up if not
        release.duration = _duration(release.outcome)
    return render(request, "deployments/history.html", {"deployment": deployment, "page": page})


def _duration(rollout: Rollout | None) -> str:
    if rollout is None or rollout.finished_at is None:
        return ""
    seconds = round((rollout.finished_at - rollout.created_at).total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
