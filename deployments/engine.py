"""The rollout reconciler: one idempotent step at a time, from the state stored in the database.

`advance(rollout_id, revision)` takes a short lease on the row, reads the stored
state, does one step against the target (apply, route, observe, analyse), and
commits the next state with the revision it read. Then it enqueues itself once
more, carrying the new revision: a message for an older revision is stale and
dropped, so exactly one chain of messages drives a rollout. A person's action
(pause, abort...) bumps the revision too, so a step computed meanwhile is thrown
away and recomputed from what the person set. A killed worker or a lost message
only delays a rollout: the sweeper re-enqueues whatever is overdue.

Every call to a target is idempotent, and events and audit records are written
only in the committing transaction, so a step repeated after a crash changes
nothing twice.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from controlplane.audit import Actor, record
from controlplane.errors import ServiceError
from controlplane.models import Outcome
from deployments import approvals
from deployments.keepalive import KeepAlive
from deployments.ledger import record_serving
from deployments.models import (
    ROLLOUT_ACTIVE,
    ROLLOUT_RUNNING,
    ROLLOUT_TRANSITIONS,
    BuildStatus,
    Deployment,
    Release,
    ReleaseKind,
    Rollout,
    RolloutEvent,
    RolloutState,
    TargetKind,
)
from deployments.plans import describe
from deployments.targets import (
    DeploymentRef,
    ReleaseSpec,
    RuntimeSettings,
    Target,
    TargetError,
    TargetStatus,
    get_target,
)

log = logging.getLogger(__name__)
S = RolloutState


def check_transition(old: str, new: str) -> None:
    """The one check every rollout state change goes through."""
    if new != old and new not in ROLLOUT_TRANSITIONS[old]:
        raise ValueError(f"illegal rollout transition {old} -> {new}")


@dataclass
class Step:
    """What one tick decided: fields to store, events to append, when to look again."""

    fields: dict = field(default_factory=dict)
    events: list[tuple[str, str, dict]] = field(default_factory=list)
    delay: float = 0.0
    deployment: dict = field(default_factory=dict)
    # The deployment's whole traffic split once this step commits, {release pk: percent}, for the
    # ledger (deployments.ledger); None: traffic did not move. Keyed by release, not slot: a
    # rollback onto a warm release runs in that release's slot but is a release of its own.
    serving: dict[int, int] | None = None

    def event(self, kind: str, message: str, **data) -> Step:
        self.events.append((kind, message, data))
        return self


# --- Plain values for the targets ---------------------------------------------------------
def deployment_ref(deployment: Deployment) -> DeploymentRef:
    env = deployment.environment
    return DeploymentRef(
        id=deployment.pk,
        key=deployment.key,
        model_name=deployment.model.name,
        environment=env.name,
        target_config=env.target_config,
    )


def release_spec(release: Release) -> ReleaseSpec:
    from registry.services import artifact_path

    version = release.model_version
    return ReleaseSpec(
        number=release.slot,
        model_name=version.model.name,
        model_version=version.version,
        artifact_sha256=version.sha256,
        signature=version.signature or None,
        settings=RuntimeSettings(**release.settings),
        artifact_path=artifact_path(version),
        image=release.image or None,
    )


def target_for(deployment: Deployment) -> Target:
    return get_target(deployment.environment.target)


def status_snapshot(status: TargetStatus) -> dict:
    """The target's status as the pages show it."""
    return {
        "endpoint": status.endpoint,
        "weights": {str(n): w for n, w in status.weights.items()},
        "releases": {
            str(n): {
                "desired": r.desired,
                "updated": r.updated,
                "ready": r.ready,
                "available": r.available,
                "done": r.done,
                "failed": r.failed,
                "message": r.message,
                "warnings": r.warnings,
            }
            for n, r in sorted(status.releases.items())
        },
    }


# --- The entry point ------------------------------------------------------------------
def advance(rollout_id: int, revision: int | None = None) -> str:
    """One step of one rollout. `revision` None: the sweeper's call, acted on only when overdue."""
    now = timezone.now()
    due = Q(revision=revision) if revision is not None else Q(next_at__lte=now - _grace())
    token = uuid.uuid4().hex
    taken = (
        Rollout.objects.filter(due, pk=rollout_id, state__in=ROLLOUT_RUNNING)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
        .update(lease_owner=token, lease_expires_at=now + timedelta(seconds=settings.SLIPWAY_ROLLOUT_LEASE_S))
    )
    if not taken:
        return "stale, leased or finished"
    outcome = "crashed"
    lease = _keep_lease(rollout_id, token)
    try:
        rollout = Rollout.objects.select_related(
            "deployment__environment",
            "deployment__model",
            "release__model_version__model",
            "release__build",
            "previous_release__model_version__model",
            "release__source",
        ).get(pk=rollout_id)
        try:
            step = Reconciler(rollout).tick()
        except TargetError as exc:
            if exc.retryable:
                step = _retry(rollout, now, 2.0, "The target did not answer; trying again", f"{exc}")
            else:
                step = _give_up(rollout, str(exc))
        except Exception as exc:  # a bug must not wedge the rollout: log it and look again later
            log.exception("rollout %s: step crashed", rollout_id)
            crash = f"{type(exc).__name__}: {exc}"
            step = _retry(
                rollout, now, 5.0, "A step crashed; retrying", f"{crash}. Report this bug with the worker's log"
            )
        outcome = commit(rollout, step, token)
        return outcome
    finally:
        lease.stop()
        Rollout.objects.filter(pk=rollout_id, lease_owner=token).update(lease_owner="", lease_expires_at=None)
        if outcome == "superseded":
            _take_up(rollout_id)


def _keep_lease(rollout_id: int, token: str) -> KeepAlive:
    """Keeps this worker's lease on the rollout alive while its step runs, however long the step takes.

    A step can outlast SLIPWAY_ROLLOUT_LEASE_S (an API server that answers slowly, a target that
    retries inside one call); with its lease run out, the sweeper's message would let a second
    worker drive the same rollout at the same time. So the lease is renewed every quarter of it,
    as a build's heartbeat is. Only this worker's lease is touched: once the step commits or gives
    the rollout up, the token no longer matches and nothing is renewed.
    """
    lease = timedelta(seconds=settings.SLIPWAY_ROLLOUT_LEASE_S)
    held = Rollout.objects.filter(pk=rollout_id, lease_owner=token)
    return KeepAlive(
        f"rollout-{rollout_id}-lease",
        lease.total_seconds() / 4,
        lambda: held.update(lease_expires_at=timezone.now() + lease),
    )


def _take_up(rollout_id: int) -> None:
    """A person acted while this worker held the rollout: the step their action enqueued found it leased
    and was dropped, and this step's result gave way to theirs. Go on from their change now, rather than
    when the sweeper finds the rollout overdue (seconds later)."""
    latest = Rollout.objects.filter(pk=rollout_id, state__in=ROLLOUT_RUNNING).values_list("revision", flat=True)
    for revision in latest:
        enqueue(rollout_id, revision)


def _retry(rollout: Rollout, now, delay: float, doing: str, cause: str) -> Step:
    """Try the step again later; once it has failed for the plan's progress deadline, stop retrying.

    Without a bound, a target that stays away keeps the rollout active for ever: nothing
    else can be deployed, and an abort only moves it to reverting, which retries as well.
    """
    if rollout.state == S.PAUSED:
        # Paused, the engine only watches: nothing it does can be left half-done, so it waits for the
        # target as long as the person who paused it does, rather than roll the canary back.
        return Step(delay=delay).event("warning", f"{doing}: {cause}")
    since = rollout.retrying_since or now
    deadline = rollout.plan.get("progress_deadline", 300)
    if (now - since).total_seconds() <= deadline:
        return Step(delay=delay, fields={"retrying_since": since}).event("warning", f"{doing}: {cause}")
    return _give_up(
        rollout, f"Still failing after {deadline:g} s of retries (the plan's progress deadline): {cause.rstrip('.')}."
    )


def _give_up(rollout: Rollout, reason: str) -> Step:
    """A step that cannot be done: revert, or fail where there is nothing to revert or reverting is what failed."""
    if S.REVERTING in ROLLOUT_TRANSITIONS[rollout.state]:
        return revert_step(rollout, reason, timezone.now())  # no Reconciler: building one may be what fails
    if rollout.state != S.REVERTING:  # pending, building: nothing was applied to the target yet
        return Step(fields={"state": S.FAILED, "failure_reason": reason}).event("failure", reason)
    number = rollout.release.number
    share = "without traffic" if rollout.weight == 0 else "and take a share of the traffic"
    left = (
        f"Release {number} may still run on the target {share}: check it there; "
        "the next rollout that succeeds removes it."
    )
    return Step(fields={"state": S.FAILED, "failure_reason": f"{rollout.failure_reason} Then: {reason} {left}"}).event(
        "failure", reason
    )


def _grace() -> timedelta:
    return timedelta(seconds=max(2.0, 4 * settings.SLIPWAY_ROLLOUT_POLL_S))


def commit(rollout: Rollout, step: Step, token: str) -> str:
    """Store what the step decided, unless someone changed the rollout meanwhile."""
    now = timezone.now()
    new_state = step.fields.get("state", rollout.state)
    check_transition(rollout.state, new_state)
    fields = dict(step.fields)
    if new_state != rollout.state and new_state not in ROLLOUT_ACTIVE:
        fields["finished_at"] = now
    if "status" in fields and fields["status"] == rollout.status:
        del fields["status"]
    if "retrying_since" not in fields and rollout.retrying_since is not None:
        fields["retrying_since"] = None  # the target answered: a later failure starts a new count
    with transaction.atomic():
        updated = Rollout.objects.filter(pk=rollout.pk, revision=rollout.revision, lease_owner=token).update(
            **fields,
            revision=F("revision") + 1,
            updated_at=now,
            next_at=now + timedelta(seconds=step.delay),
            lease_owner="",
            lease_expires_at=None,
        )
        if not updated:
            # A person acted meanwhile; their change stands and enqueued its own step.
            return "superseded"
        if new_state != rollout.state:
            step.events.insert(0, ("transition", f"{rollout.state} → {new_state}", {"from": rollout.state}))
        RolloutEvent.objects.bulk_create(
            RolloutEvent(rollout=rollout, at=now, kind=kind, message=message, data=data)
            for kind, message, data in step.events
        )
        if step.deployment:
            Deployment.objects.filter(pk=rollout.deployment_id).update(**step.deployment)
        if step.serving is not None:
            record_serving(rollout.deployment_id, step.serving, now)
        if new_state in (S.SUCCEEDED, S.FAILED, S.ABORTED, S.ROLLED_BACK) and new_state != rollout.state:
            _record_end(rollout, new_state, fields.get("failure_reason", rollout.failure_reason))
            if new_state == S.SUCCEEDED and rollout.release.kind == ReleaseKind.ROLLBACK:
                _pin(rollout)
        if new_state in ROLLOUT_ACTIVE:
            revision = rollout.revision + 1
            transaction.on_commit(lambda: enqueue(rollout.pk, revision, countdown=step.delay))
    return new_state


def _record_end(rollout: Rollout, state: str, reason: str) -> None:
    release = rollout.release
    record(
        f"rollout.{state}",
        actor=Actor.system(),
        target=rollout,
        before={"state": rollout.state},
        after={
            "state": state,
            "release": release.number,
            "version": release.model_version.version,
            "image": release.image,
        },
        outcome=Outcome.SUCCESS if state == S.SUCCEEDED else Outcome.FAILED,
        message=reason,
        environment=rollout.deployment.environment.name,
    )


def _pin(rollout: Rollout) -> None:
    """A rollback's release serves: pin the deployment, so a promotion does not undo what a person chose.

    Only now, in the transaction that records the success: a rollback that never served (rejected,
    expired, aborted, reverted) pins nothing, and the pin's reason is never a rollback that did not happen.
    """
    release = rollout.release
    reason = f"rolled back to release {release.source.number}: {release.reason}"
    deployment = rollout.deployment
    before = Deployment.objects.filter(pk=deployment.pk).values("pinned", "pinned_reason").get()
    Deployment.objects.filter(pk=deployment.pk).update(pinned=True, pinned_reason=reason)
    record(
        "deployment.pin",
        actor=Actor.system(),
        target=deployment,
        before=before,
        after={"pinned": True, "pinned_reason": reason, "rollout": rollout.pk, "release": release.number},
        message=reason,
        environment=deployment.environment.name,
    )


def enqueue(rollout_id: int, revision: int, *, countdown: float = 0.0) -> None:
    from deployments.tasks import advance_rollout

    advance_rollout.apply_async((rollout_id, revision), countdown=countdown or None)


def sweep() -> list[int]:
    """Re-enqueue active rollouts that are overdue and unleased (their worker died or a message was lost).

    Also stops previous releases whose time kept warm (for a quick rollback) is over, and
    expires approval requests whose time is up.
    """
    from deployments.tasks import advance_rollout

    now = timezone.now()
    overdue = list(
        Rollout.objects.filter(state__in=ROLLOUT_RUNNING, next_at__lte=now - _grace())
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
        .values_list("pk", flat=True)
    )
    for pk in overdue:
        advance_rollout.delay(pk, None)
    approvals.expire_due()
    reap_warm_releases(now)
    watch_idle_local_deployments()
    return overdue


def watch_idle_local_deployments() -> None:
    """What serves on the local target once its rollout ended: restart replicas that exited, show the truth.

    A rollout's steps watch its release until it ends; after that nothing did, so a replica that
    died (the OOM killer, a crash, a reboot) left the page saying "ready" while the endpoint
    answered 503, and nothing started it again. On Kubernetes the cluster restarts pods; here the
    sweeper does, through the target's own apply (up to its restart limit: a crash loop or a
    refused model is reported, not retried for ever), and writes the status into the newest
    rollout, which is what the deployment page shows. A deployment stopped on purpose
    (stop_local_deployments removed its state) is reported as not running, and not started again.
    """
    idle = (
        Deployment.objects.filter(environment__target=TargetKind.LOCAL, current_release__isnull=False)
        .exclude(rollouts__state__in=ROLLOUT_ACTIVE)
        .select_related("environment", "model", "current_release__model_version__model")
    )
    for deployment in idle:
        latest = deployment.rollouts.order_by("-created_at", "-pk").only("pk", "revision", "state", "status").first()
        if latest is None or latest.state in ROLLOUT_ACTIVE:
            continue
        current, ref, target = deployment.current_release, deployment_ref(deployment), target_for(deployment)
        try:
            status = target.status(ref)
            mine = status.releases.get(current.slot)
            if mine is not None and mine.failed is None and (status.endpoint is None or mine.ready < mine.desired):
                target.apply(ref, release_spec(current), current.settings.get("replicas", 1))
                status = target.status(ref)
        except TargetError as exc:
            log.warning("could not look at %s's processes: %s", deployment, exc)
            continue
        except Exception:  # one deployment's broken state must not stop the look at the others
            log.exception("looking at %s's processes failed", deployment)
            continue
        snapshot = status_snapshot(status)
        if snapshot != latest.status:
            # Only the observed status changes (a terminal state stays final); the revision tells the idle
            # page's watch that there is something new to show.
            Rollout.objects.filter(pk=latest.pk, revision=latest.revision, state=latest.state).update(
                status=snapshot, revision=F("revision") + 1
            )


def reap_warm_releases(now) -> None:
    expired = (
        Deployment.objects.filter(warm_until__lt=now)
        .exclude(rollouts__state__in=ROLLOUT_ACTIVE)
        .select_related("environment", "model", "warm_release")
    )
    for deployment in expired:
        slot = deployment.warm_release.slot
        current_slot = deployment.current_release.slot if deployment.current_release_id else None
        if slot != current_slot:
            try:
                target_for(deployment).remove(deployment_ref(deployment), slot)
            except TargetError as exc:
                log.warning("could not stop the warm release of %s yet: %s", deployment, exc)
                continue
            except Exception:  # as in watch_idle_local_deployments: the others still get their turn
                log.exception("stopping the warm release of %s failed", deployment)
                continue
        Deployment.objects.filter(pk=deployment.pk, warm_until=deployment.warm_until).update(
            warm_release=None, warm_until=None
        )


def revert_step(rollout: Rollout, reason: str, now) -> Step:
    """Into reverting: back to what served before the rollout (or to nothing on a first deploy)."""
    outcome = S.ROLLED_BACK if rollout.previous_release_id is not None else S.FAILED
    step = Step(fields={"state": S.REVERTING, "revert_to": outcome, "failure_reason": reason, "step_started_at": now})
    return step.event("failure", reason)


# --- One step -------------------------------------------------------------------------
class Reconciler:
    def __init__(self, rollout: Rollout):
        self.rollout = rollout
        self.deployment = rollout.deployment
        self.release = rollout.release
        self.previous = rollout.previous_release
        self.ref = deployment_ref(self.deployment)
        self.target = target_for(self.deployment)
        self.poll = settings.SLIPWAY_ROLLOUT_POLL_S
        self.now = timezone.now()

    def tick(self) -> Step:
        state = self.rollout.state
        if state == S.PENDING:
            return self.start()
        if state == S.BUILDING:
            return self.build()
        if state == S.DEPLOYING:
            return self.deploying()
        if state == S.PROGRESSING:
            return self.progress()
        if state == S.PAUSED:
            return self.observe()
        if state == S.REVERTING:
            return self.revert()
        return Step()

    # pending -> building (images) or deploying (local processes)
    def start(self) -> Step:
        needs_image = self.deployment.environment.target != TargetKind.LOCAL and not self.release.image
        if needs_image:
            return Step(fields={"state": S.BUILDING}).event("info", "Building the runtime image for this release.")
        return Step(fields={"state": S.DEPLOYING})

    def build(self) -> Step:
        from deployments.services import request_build

        release = self.release
        if release.image:
            return Step(fields={"state": S.DEPLOYING})
        build = release.build
        if build is None:
            variant = "gpu" if release.settings.get("gpus") else "cpu"
            try:
                build, _ = request_build(release.model_version, actor=Actor.system(), variant=variant)
            except ServiceError as exc:
                return Step(fields={"state": S.FAILED, "failure_reason": f"No image could be built: {exc}"})
            Release.objects.filter(pk=release.pk, build__isnull=True).update(build=build)
            return Step(delay=1.0).event("info", f"Waiting for image build #{build.pk} ({build.image_ref}).")
        if build.status == BuildStatus.SUCCEEDED:
            image = f"{build.image_ref.rsplit('@', 1)[0]}@{build.digest}"
            Release.objects.filter(pk=release.pk, image="").update(image=image)  # written once
            return Step(fields={"state": S.DEPLOYING}).event("info", f"Image ready: {image}")
        if build.status in (BuildStatus.FAILED, BuildStatus.CANCELLED):
            reason = f"Image build #{build.pk} {build.status}: {build.error or 'cancelled'}"
            return Step(fields={"state": S.FAILED, "failure_reason": reason})
        return Step(delay=1.0)

    def deploying(self) -> Step:
        status = self.target.status(self.ref)  # also proves the target answers before anything changes
        return Step(
            fields={
                "state": S.PROGRESSING,
                "step_index": 0,
                "step_started_at": self.now,
                "status": status_snapshot(status),
            }
        ).event("step", f"Step 1 of {len(self.rollout.steps)}: {describe(self.rollout.current_step)}")

    # progressing: the plan's steps
    def progress(self) -> Step:
        rollout = self.rollout
        step = {"kind": "weight", "weight": 100} if rollout.skip_steps else rollout.current_step
        if step is None:
            return self.finish()
        kind = step["kind"]
        if kind in ("weight", "preview"):
            return self.traffic(step)
        status = self.target.status(self.ref)
        if failed := self.failure(status):
            return failed
        result = Step(fields={"status": status_snapshot(status)}, delay=self.poll)
        elapsed = self.elapsed()
        if kind == "pause":
            if approvals.waits_for_pause_approval(rollout):
                request = approvals.open_pause_request(rollout)
                needed = f"{request.required} approval(s)"
                result.fields.update(state=S.PAUSED, pause_reason=f"Waiting for {needed} (request #{request.pk}).")
                return result.event("info", f"Paused by the plan until {needed} let it go on.")
            if step["duration_s"] is None:
                result.fields.update(state=S.PAUSED, pause_reason="The plan pauses here until someone resumes.")
                return result.event("info", "Paused by the plan: resume to go on, or promote now.")
            return result if elapsed < step["duration_s"] else self.next_step(result)
        if kind == "keep_old":
            return result if elapsed < step["duration_s"] else self.next_step(result)
        if kind == "analysis":
            return self.analyse(step, status, result)
        raise ValueError(f"unknown step {kind!r}")

    def traffic(self, step: dict) -> Step:
        """Bring the new release to its share, wait until it is ready, then route traffic to it."""
        weight = 0 if step["kind"] == "preview" else step["weight"]
        exact = self.target.exact_weights(self.ref)
        total = self.release.settings.get("replicas", 1)
        wanted = (
            total if step["kind"] == "preview" or weight >= 100 or self.previous is None else self.share(weight, exact)
        )
        self.target.apply(self.ref, release_spec(self.release), wanted)
        status = self.target.status(self.ref)
        if failed := self.failure(status):
            return failed
        result = Step(fields={"status": status_snapshot(status)}, delay=self.poll)
        mine = status.releases.get(self.release.slot)
        if mine is None or not mine.done or mine.desired != wanted or mine.ready < wanted:
            deadline = self.rollout.plan.get("progress_deadline", 300)
            if self.elapsed() > deadline:
                detail = (mine.message if mine else "not running") + (
                    f" ({'; '.join(mine.warnings)})" if mine and mine.warnings else ""
                )
                return self.fail(f"Release {self.release.number} was not ready after {deadline:g} s: {detail}")
            return result
        if step["kind"] == "preview":
            return self.next_step(
                result.event("info", f"Release {self.release.number} is up: {wanted} ready, no traffic yet.")
            )
        weights = {self.release.slot: weight}
        if self.previous is not None and weight < 100:
            weights[self.previous.slot] = 100 - weight
            if not exact:
                old_total = self.previous.settings.get("replicas", 1)
                self.target.apply(self.ref, release_spec(self.previous), max(1, old_total - wanted))
                self.stop_others(weights, status, result)
        endpoint = self.target.route(self.ref, weights)
        result.deployment["endpoint"] = endpoint
        result.fields["weight"] = weight
        if self.previous is None:
            result.serving = {self.release.pk: 100}  # the only release routed: every request goes to it
        else:
            result.serving = {self.release.pk: weight, self.previous.pk: 100 - weight}
        note = "" if exact or weight >= 100 or self.previous is None else " (by replica ratio)"
        result.event("step", f"{weight}% of traffic on release {self.release.number}{note}", weights=weights)
        if self.rollout.skip_steps:
            return self.finish(result)
        return self.next_step(result)

    def stop_others(self, weights: dict[int, int], status: TargetStatus, result: Step) -> None:
        """A split by replica ratio goes to every pod of the deployment: stop any release not in it.

        That is a release kept warm by the rollout before this one (keep_previous): left up, it
        would take a share of the traffic that neither the page nor the ledger shows. A rollback
        to it is then a cold one. Checked from the deployment's row as well as from the target's
        status, so a step repeated after a crash still forgets the warm release.
        """
        for slot in sorted(set(status.releases) - set(weights)):
            self.target.remove(self.ref, slot)
            del status.releases[slot]
            result.fields["status"] = status_snapshot(status)
        warm = self.deployment.warm_release
        if warm is not None and warm.slot not in weights:
            result.deployment.update(warm_release_id=None, warm_until=None)
            result.event(
                "info",
                f"Release {warm.number}, kept up without traffic since the last rollout, is stopped: "
                "a split by replica ratio would send it a share. A rollback to it starts it again.",
            )

    def share(self, weight: int, exact: bool) -> int:
        total = self.release.settings.get("replicas", 1)
        if exact:
            return max(1, math.ceil(total * weight / 100))
        return max(1, round(total * weight / 100))

    def analyse(self, step: dict, status: TargetStatus, result: Step) -> Step:
        from deployments.analysis import Sample, Thresholds, judge, parse, window

        rollout = self.rollout
        number = self.release.slot
        if rollout.analysis_baseline is None:
            try:
                baseline = parse(self.target.metrics(self.ref, number))
            except ValueError as exc:  # not the runtime's metrics: nothing to judge by
                return self.fail(f"Analysis could not read release {number}'s /metrics: {exc}")
            result.fields["analysis_baseline"] = baseline.to_dict()
            return result.event("analysis", f"Analysis started: watching release {number} for {step['duration_s']:g} s")
        if self.elapsed() < step["duration_s"]:
            return result
        try:
            after = parse(self.target.metrics(self.ref, number))
        except ValueError as exc:
            return self.fail(f"Analysis could not read release {number}'s /metrics: {exc}")
        sample = window(Sample.from_dict(rollout.analysis_baseline), after)
        mine = status.releases.get(number)
        verdict = judge(
            Thresholds.from_dict(step["thresholds"]),
            ready=mine.ready if mine else 0,
            desired=mine.desired if mine else self.release.settings.get("replicas", 1),
            sample=sample,
        )
        result.fields.update(analysis=verdict.to_dict(), analysis_baseline=None)
        if not verdict.passed:
            failed = self.fail(f"Analysis failed: {verdict.summary()}")
            failed.fields["analysis"] = verdict.to_dict()
            return failed.event("analysis", f"Analysis failed: {verdict.summary()}", **verdict.to_dict())
        result.event("analysis", f"Analysis {verdict.summary()}", **verdict.to_dict())  # "passed: " and what it saw
        return self.next_step(result)

    def next_step(self, result: Step) -> Step:
        index = self.rollout.step_index + 1
        result.fields.update(step_index=index, step_started_at=self.now, analysis_baseline=None)
        result.delay = 0.0
        steps = self.rollout.steps
        if index < len(steps):
            result.event("step", f"Step {index + 1} of {len(steps)}: {describe(steps[index])}")
        return result

    def finish(self, result: Step | None = None) -> Step:
        """Everything on the new release: remove every other release, and mark it current."""
        result = result or Step()
        endpoint = self.target.route(self.ref, {self.release.slot: 100})
        keep = self.previous.slot if self.previous is not None and self.rollout.plan.get("keep_previous") else None
        for slot in self.target.status(self.ref).releases:
            if slot not in (self.release.slot, keep):
                self.target.remove(self.ref, slot)
        if keep is not None:
            # The previous release stays up without traffic for a while: a rollback to it only re-routes.
            result.deployment.update(
                warm_release_id=self.previous.pk,
                warm_until=self.now + timedelta(seconds=self.rollout.plan["keep_previous"]),
            )
            kept = self.rollout.plan["keep_previous"]
            result.event(
                "info",
                f"Release {self.previous.number} stays up without traffic for {kept:g} s: "
                "a rollback to it only re-routes.",
            )
        else:
            result.deployment.update(warm_release_id=None, warm_until=None)
        result.fields.update(state=S.SUCCEEDED, weight=100, step_index=len(self.rollout.steps))
        result.fields["status"] = status_snapshot(self.target.status(self.ref))
        result.deployment.update(current_release_id=self.release.pk, endpoint=endpoint)
        result.serving = {self.release.pk: 100}
        return result.event("info", f"Release {self.release.number} serves all traffic at {endpoint}")

    # paused: keep watching, so a release that breaks while paused still rolls back
    def observe(self) -> Step:
        status = self.target.status(self.ref)
        if failed := self.failure(status):
            return failed
        return Step(fields={"status": status_snapshot(status)}, delay=max(self.poll, 1.0))

    def failure(self, status: TargetStatus) -> Step | None:
        mine = status.releases.get(self.release.slot)
        if mine is not None and mine.failed:
            # The warnings say why (ImagePullBackOff...): keep them, the status that holds them is replaced on revert.
            why = [warning for warning in mine.warnings if warning not in mine.failed]
            detail = f" ({'; '.join(why)})" if why else ""
            return self.fail(f"Release {self.release.number} failed: {mine.failed}{detail}", status)
        return None

    def fail(self, reason: str, status: TargetStatus | None = None) -> Step:
        """Roll back automatically: revert to what served before (or to nothing on a first deploy)."""
        step = revert_step(self.rollout, reason, self.now)
        if status is not None:
            step.fields["status"] = status_snapshot(status)
        return step

    # reverting: the previous release back to full strength and all traffic, then the new one removed
    def revert(self) -> Step:
        outcome = self.rollout.revert_to or S.FAILED
        result = Step(delay=self.poll)
        if self.previous is not None:
            total = self.previous.settings.get("replicas", 1)
            self.target.apply(self.ref, release_spec(self.previous), total)
            status = self.target.status(self.ref)
            result.fields["status"] = status_snapshot(status)
            theirs = status.releases.get(self.previous.slot)
            deadline = self.rollout.plan.get("progress_deadline", 300)
            if theirs is None or not theirs.done or theirs.ready < total:
                if self.elapsed() <= deadline:
                    return result
                result.event(
                    "warning", f"Release {self.previous.number} was not fully ready again after {deadline:g} s."
                )
            endpoint = self.target.route(self.ref, {self.previous.slot: 100})
            result.deployment["endpoint"] = endpoint
            result.serving = {self.previous.pk: 100}
            if self.rollout.weight:
                # Commit the traffic's return before removing the new release: a removal that fails
                # then ends the rollout with the ledger and the page saying where traffic really goes.
                result.fields["weight"] = 0
                result.delay = 0.0
                return result.event("info", f"All traffic is back on release {self.previous.number}.")
            if self.release.slot != self.previous.slot:
                self.target.remove(self.ref, self.release.slot)
            message = f"Release {self.previous.number} serves all traffic again; release {self.release.number} removed."
        else:
            self.target.teardown(self.ref)
            result.deployment["endpoint"] = ""
            result.serving = {}
            message = f"Release {self.release.number} removed; nothing serves in this environment."
        result.fields.update(state=outcome, weight=0)
        result.fields["status"] = status_snapshot(self.target.status(self.ref))
        return result.event("info", message)

    def elapsed(self) -> float:
        started = self.rollout.step_started_at or self.rollout.created_at
        return (self.now - started).total_seconds()
