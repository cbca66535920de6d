"""Deployment verbs. Each writes its rows and its audit event in one transaction."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from controlplane.audit import Actor, record
from controlplane.errors import Conflict, InvalidInput
from controlplane.models import Outcome
from controlplane.states import compare_and_set
from deployments.builds import DOCKERFILE, RUNTIME_PACKAGE, image_ref
from deployments.models import BUILD_ACTIVE, BUILD_TRANSITIONS, BuildStatus, ImageBuild, Variant
from registry.models import ModelVersion, VersionStatus


@lru_cache(maxsize=1)
def runtime_version() -> str:
    """A digest of the runtime's code, requirements and Dockerfile: what the image is built from."""
    digest = hashlib.sha256()
    files = sorted(p for p in RUNTIME_PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in [*files, DOCKERFILE]:
        digest.update(str(path.relative_to(RUNTIME_PACKAGE.parent)).encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:12]


def base_image_for(variant: str) -> str:
    return settings.SLIPWAY_BASE_IMAGE_CPU if variant == Variant.CPU else settings.SLIPWAY_BASE_IMAGE_GPU


def request_build(version: ModelVersion, *, actor: Actor, variant: str | None = None) -> tuple[ImageBuild, bool]:
    """The build for this version's image: the existing one, or a new one queued. (build, created)."""
    variant = variant or settings.SLIPWAY_BUILD_VARIANT
    if variant not in Variant.values:
        raise InvalidInput(f"variant must be one of {', '.join(Variant.values)}.", fields={"variant": ["unknown"]})
    if version.status != VersionStatus.READY:
        raise Conflict(
            f"{version} is {version.status}: only a ready version can be built. "
            + ("Wait for validation to finish." if not version.is_terminal else "Upload a version that validates.")
        )
    if not settings.SLIPWAY_REGISTRY:
        raise InvalidInput(
            "No image registry is configured: set SLIPWAY_REGISTRY (for example 127.0.0.1:5000) and restart."
        )
    base_image, runtime = base_image_for(variant), runtime_version()
    existing = _live_build(version, runtime, base_image)
    if existing is not None:
        return existing, False
    ref = image_ref(settings.SLIPWAY_REGISTRY, version.model.name, version.version, version.sha256, variant)
    try:
        with transaction.atomic():
            build = ImageBuild.objects.create(
                model_version=version,
                variant=variant,
                base_image=base_image,
                runtime_version=runtime,
                image_ref=ref,
                requested_by=actor.user,
            )
            record(
                "image_build.start",
                actor=actor,
                target=build,
                after={"image": ref, "variant": variant, "base_image": base_image, "runtime_version": runtime},
            )
            transaction.on_commit(lambda: _enqueue(build.pk))
    except IntegrityError:
        # Someone asked for the same image at the same moment: theirs is ours.
        existing = _live_build(version, runtime, base_image)
        if existing is None:
            raise
        return existing, False
    return build, True


def _live_build(version: ModelVersion, runtime: str, base_image: str) -> ImageBuild | None:
    return (
        ImageBuild.objects.filter(model_version=version, runtime_version=runtime, base_image=base_image)
        .exclude(status__in=[BuildStatus.FAILED, BuildStatus.CANCELLED])
        .first()
    )


def _enqueue(build_id: int) -> None:
    from deployments.tasks import run_image_build

    run_image_build.delay(build_id)


def transition(build_id: int, expected: str, new: str, **fields) -> bool:
    return compare_and_set(ImageBuild, build_id, BUILD_TRANSITIONS, expected, new, **fields)


def claim(build_id: int) -> bool:
    now = timezone.now()
    return transition(
        build_id, BuildStatus.QUEUED, BuildStatus.BUILDING, started_at=now, heartbeat_at=now, attempts=F("attempts") + 1
    )


def append_log(build_id: int, text: str) -> str:
    """Append to the build's log and beat its heart; returns the build's current status."""
    ImageBuild.objects.filter(pk=build_id).update(log=Concat(F("log"), Value(text)), heartbeat_at=timezone.now())
    return ImageBuild.objects.filter(pk=build_id).values_list("status", flat=True).get()


def finish_build(build_id: int, expected: str, *, actor: Actor, cache_hit: bool = False, **facts) -> bool:
    return _end(build_id, expected, BuildStatus.SUCCEEDED, actor=actor, cache_hit=cache_hit, **facts)


def fail_build(build_id: int, expected: str, error: str, *, actor: Actor) -> bool:
    return _end(build_id, expected, BuildStatus.FAILED, actor=actor, error=error)


def _end(build_id: int, expected: str, new: str, *, actor: Actor, **fields) -> bool:
    """Move a build to a terminal status and record it, unless it moved on meanwhile."""
    with transaction.atomic():
        if not transition(build_id, expected, new, finished_at=timezone.now(), **fields):
            return False
        build = ImageBuild.objects.get(pk=build_id)
        record(
            "image_build.finish",
            actor=actor,
            target=build,
            before={"status": expected},
            after={"status": new, "digest": build.digest, "cache_hit": build.cache_hit, "image": build.image_ref},
            outcome=Outcome.FAILED if new == BuildStatus.FAILED else Outcome.SUCCESS,
            message=build.error,
        )
    return True


def cancel_build(build: ImageBuild, *, actor: Actor) -> ImageBuild:
    with transaction.atomic():
        locked = ImageBuild.objects.select_for_update().get(pk=build.pk)
        if locked.status not in BUILD_ACTIVE:
            raise Conflict(f"{locked} is already {locked.status}; only a queued or running build can be cancelled.")
        before = locked.status
        transition(locked.pk, before, BuildStatus.CANCELLED, finished_at=timezone.now())
        locked.refresh_from_db()
        record(
            "image_build.cancel", actor=actor, target=locked, before={"status": before}, after={"status": "cancelled"}
        )
    return locked


def recover_stale_builds(*, actor: Actor) -> list[int]:
    """Builds whose worker stopped beating: queued again, or failed after too many attempts."""
    cutoff = timezone.now() - timezone.timedelta(seconds=settings.SLIPWAY_BUILD_STALE_S)
    recovered = []
    stale = ImageBuild.objects.filter(
        status__in=[BuildStatus.BUILDING, BuildStatus.PUSHING], heartbeat_at__lt=cutoff
    ).values_list("pk", "status", "attempts")
    for pk, status, attempts in stale:
        with transaction.atomic():
            if attempts >= settings.SLIPWAY_BUILD_MAX_ATTEMPTS:
                fail_build(
                    pk,
                    status,
                    f"The worker building this image was lost {attempts} times; nothing was recorded as pushed. "
                    "Check the workers' memory and disk, then request the build again.",
                    actor=actor,
                )
            elif transition(pk, status, BuildStatus.QUEUED, heartbeat_at=None):
                record(
                    "image_build.requeued",
                    actor=actor,
                    target=("image_build", pk, f"build #{pk}"),
                    message=f"no heartbeat for {settings.SLIPWAY_BUILD_STALE_S:.0f}s while {status}",
                )
                transaction.on_commit(lambda pk=pk: _enqueue(pk))
        recovered.append(pk)
    stuck_queued = ImageBuild.objects.filter(status=BuildStatus.QUEUED, created_at__lt=cutoff).values_list(
        "pk", flat=True
    )
    for pk in stuck_queued:  # a lost broker message only delays a build
        _enqueue(pk)
    return recovered
