"""Two-person approval for protected environments.

In an environment with `required_approvals = N > 0`, every rollout (deploy, promote,
rollback) is created `awaiting_approval` with an ApprovalRequest that snapshots what
would change. It starts only once N approvers other than its requester approve; one
rejection ends it, and so does the request's expiry. With `approve_pauses`, each pause
step of the plan waits for N approvals too, instead of a timer or a resume.

Every decision is an audit event written in the transaction that records it; a
request's outcome moves its rollout in that same transaction.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from controlplane import access
from controlplane.audit import Actor, record
from controlplane.errors import Conflict, Forbidden, InvalidInput
from controlplane.models import Outcome, Role
from deployments.models import (
    ApprovalDecision,
    ApprovalKind,
    ApprovalRequest,
    ApprovalState,
    Decision,
    Environment,
    Release,
    Rollout,
    RolloutEvent,
    RolloutState,
)

S = RolloutState


def change_summary(rollout: Rollout) -> dict:
    """What the rollout changes, as approvers see it: fixed when the request is made."""
    release = rollout.release
    version = release.model_version
    previous = rollout.previous_release
    image = release.image or (release.build.image_ref if release.build_id else "")
    return {
        "kind": release.kind,
        "model": version.model.name,
        "version": version.version,
        "sha256": version.sha256,
        "release": release.number,
        "image": image,
        "digest": release.digest,
        "settings": release.settings,
        "plan": rollout.plan,
        "source_release": release.source.number if release.source_id else None,
        "previous": None
        if previous is None
        else {
            "release": previous.number,
            "version": previous.model_version.version,
            "image": previous.image,
            "digest": previous.digest,
            "settings": previous.settings,
        },
    }


def open_request(
    rollout: Rollout, environment: Environment, *, actor: Actor, reason: str, kind: str = ApprovalKind.START
) -> ApprovalRequest:
    """Ask for approval of `rollout` (inside the transaction that creates it, for a start)."""
    step_index = rollout.step_index if kind == ApprovalKind.PAUSE else None
    now = timezone.now()
    request = ApprovalRequest.objects.create(
        rollout=rollout,
        environment=environment,
        kind=kind,
        step_index=step_index,
        required=environment.required_approvals,
        requested_by=rollout.requested_by,  # they may not approve their own rollout, at any step
        requester=actor.label if kind == ApprovalKind.START else _username(rollout.requested_by),
        reason=reason,
        change=change_summary(rollout),
        created_at=now,
        expires_at=now + timedelta(seconds=environment.approval_timeout_s),
    )
    what = "to start" if kind == ApprovalKind.START else f"to go past step {step_index + 1}"
    RolloutEvent.objects.create(
        rollout=rollout,
        kind="approval",
        message=f"Waiting for {request.required} approval(s) {what} (request #{request.pk}).",
        data={"approval": request.pk},
    )
    record(
        "approval.request",
        actor=actor,
        target=request,
        after={"kind": kind, "required": request.required, "expires_at": request.expires_at, **request.change},
        message=reason,
        environment=environment.name,
    )
    return request


def _username(user) -> str:
    return user.get_username() if user is not None else "system"


def open_pause_request(rollout: Rollout) -> ApprovalRequest:
    """The engine, at a pause step of a rollout in a protected environment with pause approvals."""
    environment = rollout.deployment.environment
    try:
        with transaction.atomic():
            return open_request(
                rollout,
                environment,
                actor=Actor.system(),
                reason=f"step {rollout.step_index + 1}: {rollout.current_step.get('kind', 'pause')}",
                kind=ApprovalKind.PAUSE,
            )
    except IntegrityError:  # asked already (a step repeated after a crash)
        return ApprovalRequest.objects.get(rollout=rollout, kind=ApprovalKind.PAUSE, step_index=rollout.step_index)


def decide(request: ApprovalRequest, *, actor: Actor, decision: str, comment: str = "") -> ApprovalRequest:
    """An approver approves or rejects. Refused: self-approval, a second decision, an expired request."""
    if decision not in Decision.values:
        raise InvalidInput(f"decision must be one of {', '.join(Decision.values)}.", fields={"decision": ["unknown"]})
    # The role first: asking someone who may not decide for a comment suggests a comment is all they lack.
    access.require(actor, Role.APPROVER, request.environment, "approve or reject rollouts")
    comment = (comment or "").strip()
    if decision == Decision.REJECT and not comment:
        raise InvalidInput("Say why you reject it: a comment is required.", fields={"comment": ["required"]})
    if request.state == ApprovalState.PENDING and request.expires_at <= timezone.now():
        expire(request.pk)
        request.refresh_from_db()
    with transaction.atomic():
        _lock_rollout(request.rollout_id)
        locked = ApprovalRequest.objects.select_for_update().select_related("environment").get(pk=request.pk)
        if locked.state != ApprovalState.PENDING:
            when = f" at {locked.decided_at:%Y-%m-%d %H:%M} UTC" if locked.decided_at else ""
            raise Conflict(f"Approval request #{locked.pk} is {locked.state}{when}: nothing is left to decide.")
        if actor.user is not None and actor.user.pk == locked.requested_by_id:
            raise Forbidden(
                f"You asked for this rollout: approvals must come from {locked.required} approver(s) other than you. "
                + ("To withdraw it, abort the rollout." if decision == Decision.REJECT else "")
            )
        try:
            with transaction.atomic():
                ApprovalDecision.objects.create(
                    request=locked, user=actor.user, approver=actor.label, decision=decision, comment=comment
                )
        except IntegrityError:
            raise Conflict(f"You already decided on approval request #{locked.pk}.") from None
        env = locked.environment.name
        record(
            f"approval.{decision}",
            actor=actor,
            target=locked,
            after={"decision": decision, "rollout": locked.rollout_id},
            message=comment,
            environment=env,
        )
        RolloutEvent.objects.create(
            rollout_id=locked.rollout_id,
            kind="approval",
            message=f"{actor.label} {Decision(decision).label} request #{locked.pk}"
            + (f": {comment}" if comment else ""),
        )
        if decision == Decision.REJECT:
            _end(locked, ApprovalState.REJECTED, f"Rejected by {actor.label}: {comment}", actor)
        else:
            # Usernames, as Release.approved_by promises: the decision's label may name a token too.
            approvers = [
                username or label
                for label, username in locked.decisions.filter(decision=Decision.APPROVE)
                .order_by("at", "pk")
                .values_list("approver", "user__username")
            ]
            if len(approvers) >= locked.required:
                _grant(locked, approvers, actor)
    locked.refresh_from_db()
    return locked


def _grant(request: ApprovalRequest, approvers: list[str], actor: Actor) -> None:
    from deployments.services import _advance

    now = timezone.now()
    ApprovalRequest.objects.filter(pk=request.pk).update(state=ApprovalState.APPROVED, decided_at=now)
    rollout = Rollout.objects.select_for_update(of=("self",)).get(pk=request.rollout_id)
    if request.kind == ApprovalKind.START:
        if rollout.state != S.AWAITING_APPROVAL:
            return
        Release.objects.filter(pk=rollout.release_id).update(approved_by=approvers)
        fields = {"state": S.PENDING}
    else:
        if rollout.state != S.PAUSED or rollout.step_index != request.step_index:
            return
        fields = {
            "state": S.PROGRESSING,
            "pause_reason": "",
            "step_index": rollout.step_index + 1,
            "step_started_at": now,
        }
    _move(rollout, fields, f"Approved by {', '.join(approvers)}.")
    record(
        "approval.granted",
        actor=actor,
        target=request,
        after={"approved_by": approvers, "rollout": rollout.pk, "state": fields["state"]},
        environment=request.environment.name,
    )
    revision = rollout.revision + 1
    transaction.on_commit(lambda: _advance(rollout.pk, revision))


def _end(request: ApprovalRequest, state: str, why: str, actor: Actor) -> None:
    """Rejected or expired: the request ends, and so does its rollout (reverting any traffic it took)."""
    from deployments.services import _advance

    now = timezone.now()
    ApprovalRequest.objects.filter(pk=request.pk).update(state=state, decided_at=now)
    rollout = Rollout.objects.select_for_update(of=("self",)).get(pk=request.rollout_id)
    if rollout.state == S.AWAITING_APPROVAL:
        fields = {"state": S.ABORTED, "failure_reason": why, "finished_at": now}
    elif rollout.state in (S.PAUSED, S.PROGRESSING):
        fields = {"state": S.REVERTING, "revert_to": S.ABORTED, "failure_reason": why, "step_started_at": now}
    else:
        return
    _move(rollout, fields, why)
    if fields["state"] == S.REVERTING:
        revision = rollout.revision + 1
        transaction.on_commit(lambda: _advance(rollout.pk, revision))
    else:
        record(
            "rollout.aborted",
            actor=actor,
            target=rollout,
            before={"state": rollout.state},
            after={"state": S.ABORTED},
            outcome=Outcome.FAILED,
            message=why,
            environment=request.environment.name,
        )


def _move(rollout: Rollout, fields: dict, message: str) -> None:
    from deployments.engine import check_transition

    check_transition(rollout.state, fields["state"])
    now = timezone.now()
    Rollout.objects.filter(pk=rollout.pk).update(**fields, revision=F("revision") + 1, next_at=now, updated_at=now)
    RolloutEvent.objects.bulk_create(
        [
            RolloutEvent(rollout=rollout, at=now, kind="approval", message=message),
            RolloutEvent(
                rollout=rollout,
                at=now,
                kind="transition",
                message=f"{rollout.state} → {fields['state']}",
                data={"from": rollout.state},
            ),
        ]
    )


def _lock_rollout(rollout_id: int) -> None:
    """Its rollout first, as aborting it takes it (then its requests, then the audit chain's lock): taken
    the other way round, a decision and an abort of the same rollout at the same moment deadlocked."""
    Rollout.objects.select_for_update(of=("self",)).filter(pk=rollout_id).first()


def expire(request_id: int) -> bool:
    """End a pending request whose time is up (and its rollout). True when this call expired it."""
    rollout_id = ApprovalRequest.objects.filter(pk=request_id).values_list("rollout_id", flat=True).first()
    with transaction.atomic():
        _lock_rollout(rollout_id)
        request = (
            ApprovalRequest.objects.select_for_update()
            .select_related("environment")
            .filter(pk=request_id, state=ApprovalState.PENDING, expires_at__lte=timezone.now())
            .first()
        )
        if request is None:
            return False
        when = f"{request.expires_at:%Y-%m-%d %H:%M} UTC"
        why = f"Approval request #{request.pk} expired at {when} without enough approvals."
        record(
            "approval.expire", actor=Actor.system(), target=request, message=why, environment=request.environment.name
        )
        _end(request, ApprovalState.EXPIRED, why, Actor.system())
    return True


def expire_due() -> list[int]:
    """The sweeper's part: expire every pending request whose time is up."""
    due = ApprovalRequest.objects.filter(state=ApprovalState.PENDING, expires_at__lte=timezone.now())
    return [pk for pk in due.values_list("pk", flat=True) if expire(pk)]


def cancel_for(rollout: Rollout, *, actor: Actor, why: str) -> None:
    """The rollout was aborted while a request waited: the request is cancelled (same transaction)."""
    for request in ApprovalRequest.objects.select_for_update().filter(rollout=rollout, state=ApprovalState.PENDING):
        ApprovalRequest.objects.filter(pk=request.pk).update(state=ApprovalState.CANCELLED, decided_at=timezone.now())
        record(
            "approval.cancel",
            actor=actor,
            target=request,
            message=why,
            environment=rollout.deployment.environment.name,
        )


def could_decide(request: ApprovalRequest, actor: Actor) -> bool:
    """Whether `actor` may still approve or reject `request` (what decide() would not refuse)."""
    user = actor.user
    return (
        request.is_pending
        and user is not None
        and request.requested_by_id != user.pk
        and all(decision.user_id != user.pk for decision in request.decisions.all())
        and access.can(actor, Role.APPROVER, request.environment)
    )


def waiting_count(actor: Actor) -> int:
    """How many requests `actor` could decide (could_decide, counted in the database): pending, in an
    environment where they approve, neither asked for nor decided by them.

    Every page's navigation shows it, so the SQL is written out: the ORM took ~1 ms to build it (the
    exclusion across decisions is a subquery), three times as long as the query itself.
    """
    if actor.user is None:
        return 0
    environments = access.environment_ids(actor, Role.APPROVER)
    if environments is not None and not environments:
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


def pending_pause_request(rollout: Rollout) -> ApprovalRequest | None:
    return ApprovalRequest.objects.filter(
        rollout=rollout, kind=ApprovalKind.PAUSE, step_index=rollout.step_index, state=ApprovalState.PENDING
    ).first()


def waits_for_pause_approval(rollout: Rollout) -> bool:
    env = rollout.deployment.environment
    return env.is_protected and env.approve_pauses
