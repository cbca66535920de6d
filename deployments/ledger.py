"""The "what served when" ledger: write it where traffic moves, read it for any instant.

The engine calls `record_serving` inside the transaction that commits a step which
moved traffic, with the deployment's whole traffic split after that step. Intervals
whose weight changed are closed and new ones opened, so a repeated step writes
nothing and a step thrown away (superseded) writes nothing either.

`serving_at` answers "what served at T" for many deployments in two queries:
the deployments, and the intervals that contain T. Intervals are half-open
[started_at, ended_at): at the instant of a change, the new split is the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from controlplane.errors import InvalidInput
from deployments.models import Deployment, Release, ServingInterval


def record_serving(deployment_id: int, serving: dict[int, int], at: datetime) -> int:
    """Make the deployment's open intervals say `serving` ({release pk: percent}) from `at` on.

    Releases left out, or at 0%, serve nothing from `at`. Returns how many rows
    were closed or opened: 0 when the ledger already said so. Call it inside the
    transaction that records the traffic change (select_for_update insists).
    """
    wanted = {release_id: weight for release_id, weight in serving.items() if weight > 0}
    open_now = {
        interval.release_id: interval
        for interval in ServingInterval.objects.select_for_update().filter(
            deployment_id=deployment_id, ended_at__isnull=True
        )
    }
    # Workers' clocks may disagree a little: the ledger never runs backwards.
    at = max([at, *(interval.started_at for interval in open_now.values())])
    changed = [
        interval.pk for release_id, interval in open_now.items() if wanted.get(release_id) != interval.weight_percent
    ]
    if changed:
        ServingInterval.objects.filter(pk__in=changed).update(ended_at=at)
    opened = ServingInterval.objects.bulk_create(
        ServingInterval(deployment_id=deployment_id, release_id=release_id, weight_percent=weight, started_at=at)
        for release_id, weight in wanted.items()
        if release_id not in open_now or open_now[release_id].weight_percent != weight
    )
    return len(changed) + len(opened)


def parse_instant(text: str | None, *, field_name: str = "at") -> datetime:
    """An ISO 8601 time from a query string or a form; empty means now, no offset means UTC."""
    text = (text or "").strip()
    if not text:
        return timezone.now()
    example = "2026-05-01T14:30:00Z"
    try:
        parsed = parse_datetime(text)
    except ValueError as exc:  # well formed but impossible, like month 13
        raise InvalidInput(
            f"{field_name}={text!r} is not a real time ({exc}): use e.g. {example}.", fields={field_name: [str(exc)]}
        ) from None
    if parsed is None:
        raise InvalidInput(
            f"{field_name}={text!r} is not an ISO 8601 time: use e.g. {example} (no offset means UTC).",
            fields={field_name: ["not an ISO 8601 time"]},
        )
    if timezone.is_naive(parsed):
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


@dataclass
class Serving:
    """One release serving one deployment at an instant, with who put it there and why."""

    deployment: Deployment
    release: Release
    weight_percent: int
    since: datetime | None
    until: datetime | None
    recorded: bool = True  # False: derived from the deployment's current release (no ledger rows for it)

    @property
    def approved_by(self) -> list[str]:
        """Who approved the release, in order (empty outside protected environments)."""
        return self.release.approved_by

    @property
    def rollout(self):
        return getattr(self.release, "rollout", None)


@dataclass
class Answer:
    at: datetime
    rows: list[Serving]
    note: str = ""


RELEASE_FIELDS = ("release__model_version", "release__created_by", "release__rollout", "release__source")


def serving_at(deployments: QuerySet[Deployment], at: datetime) -> list[Serving]:
    """What served each of `deployments` at `at`, in two queries whatever their number.

    A deployment with a current release but no ledger rows at all (made before the
    ledger existed, or outside the engine) is answered from its current release,
    marked `recorded=False`, from the time its rollout ended.
    """
    deployments = list(
        deployments.select_related(
            "model",
            "environment",
            "current_release__model_version",
            "current_release__created_by",
            "current_release__rollout",
            "current_release__source",
        ).annotate(has_ledger=Exists(ServingInterval.objects.filter(deployment=OuterRef("pk"))))
    )
    by_pk = {deployment.pk: deployment for deployment in deployments}
    intervals = (
        ServingInterval.objects.filter(deployment__in=[d.pk for d in deployments if d.has_ledger], started_at__lte=at)
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gt=at))
        .select_related(*RELEASE_FIELDS)
        .order_by("deployment_id", "-weight_percent", "release__number")
    )
    found: dict[int, list[Serving]] = {}
    for interval in intervals:
        found.setdefault(interval.deployment_id, []).append(
            Serving(
                deployment=by_pk[interval.deployment_id],
                release=interval.release,
                weight_percent=interval.weight_percent,
                since=interval.started_at,
                until=interval.ended_at,
            )
        )
    rows: list[Serving] = []
    for deployment in deployments:
        if deployment.has_ledger:
            rows += found.get(deployment.pk, [])
        elif (derived := _from_current_release(deployment, at)) is not None:
            rows.append(derived)
    return rows


def _from_current_release(deployment: Deployment, at: datetime) -> Serving | None:
    release = deployment.current_release
    if release is None:
        return None
    rollout = getattr(release, "rollout", None)
    since = rollout.finished_at if rollout is not None and rollout.finished_at else release.created_at
    if since > at:
        return None
    return Serving(deployment=deployment, release=release, weight_percent=100, since=since, until=None, recorded=False)


def environment_deployments(environment) -> QuerySet[Deployment]:
    """The environment's deployments in the order the answers list them (pages paginate this)."""
    return Deployment.objects.filter(environment=environment).order_by("model__name", "pk")


def environment_serving(environment, at: datetime, deployments: QuerySet[Deployment] | None = None) -> Answer:
    """What served in `environment` at `at`: all its deployments, or the page of them given."""
    if at < environment.created_at:
        created = f"{environment.created_at:%Y-%m-%d %H:%M:%S}"
        note = f"Environment {environment.name} was created at {created} UTC: nothing served in it before."
        return Answer(at=at, rows=[], note=note)
    if deployments is None:
        deployments = environment_deployments(environment)
    return Answer(at=at, rows=serving_at(deployments, at), note=_future_note(at))


def deployment_serving(deployment: Deployment, at: datetime) -> Answer:
    if at < deployment.created_at:
        created = f"{deployment.created_at:%Y-%m-%d %H:%M:%S}"
        note = f"{deployment} was created at {created} UTC: nothing served before."
        return Answer(at=at, rows=[], note=note)
    return Answer(at=at, rows=serving_at(Deployment.objects.filter(pk=deployment.pk), at), note=_future_note(at))


def _future_note(at: datetime) -> str:
    if at > timezone.now():
        return "That time is in the future: this is what serves now, unless something changes before then."
    return ""
