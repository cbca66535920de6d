"""Thin tasks: load the build by id and run its steps through builds.py and services.py."""

from __future__ import annotations

import contextlib
import json
import logging
import time

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from controlplane.audit import Actor
from deployments import builds, services
from deployments.keepalive import KeepAlive
from deployments.models import BuildStatus, ImageBuild

log = logging.getLogger(__name__)


class _LogSink:
    """Collects build output and writes it to the row about twice a second.

    Each flush also beats the build's heart and reads its status back, so a
    cancellation is noticed within a flush interval. Once the build is claimed, only
    this attempt's row is written: an attempt that the sweeper replaced stops (superseded).
    """

    def __init__(self, build_id: int, interval: float = 0.5):
        self.build_id = build_id
        self.attempt: int | None = None
        self.interval = interval
        self.pending: list[str] = []
        self.last = 0.0

    def __call__(self, text: str) -> None:
        """Add a line; an empty `text` adds none but still flushes when due (a push's byte counts)."""
        if text:
            self.pending.append(text if text.endswith("\n") else text + "\n")
        if time.monotonic() - self.last >= self.interval:
            self.flush()

    def flush(self) -> None:
        text, self.pending = "".join(self.pending), []
        self.last = time.monotonic()
        status = services.append_log(self.build_id, text, self.attempt)
        if status is None:
            raise _Superseded()
        if status == BuildStatus.CANCELLED:
            raise builds.BuildCancelled()


class _Superseded(Exception):
    """The sweeper took this attempt's worker for dead and another attempt claimed the build."""


def _heartbeat(build_id: int, attempt: int) -> KeepAlive:
    """Beats the build's heart while this worker works on it, whether or not the build prints anything.

    The log's flushes beat it too, but a step can be silent for minutes (pip downloading a
    multi-GB torch wheel prints one line, then nothing until it is done), and the stale-build
    sweeper would take such a build for one whose worker died and queue it again. Only this
    attempt's row is touched: an attempt the sweeper already replaced does not keep the new one alive.
    """
    beating = ImageBuild.objects.filter(pk=build_id, attempts=attempt)
    return KeepAlive(
        f"build-{build_id}-heartbeat",
        min(5.0, settings.SLIPWAY_BUILD_STALE_S / 4),
        lambda: beating.update(heartbeat_at=timezone.now()),
    )


@shared_task(acks_late=True, reject_on_worker_lost=True)
def run_image_build(build_id: int) -> str:
    build = ImageBuild.objects.select_related("model_version__model").get(pk=build_id)
    if build.status != BuildStatus.QUEUED:
        return f"skipped: {build.status}"
    system = Actor.system()
    config = builds.BuildConfig.from_settings()
    emit = _LogSink(build_id)
    status = BuildStatus.QUEUED
    attempt = heart = None
    try:
        client = builds.connect(config.timeout_s)
        digest = builds.registry_digest(client, build.image_ref, config)
        if digest is not None:
            emit(f"{build.image_ref} is already in the registry ({digest}): nothing to build.")
            emit.flush()
            services.finish_build(build_id, BuildStatus.QUEUED, actor=system, cache_hit=True, digest=digest)
            return "cache hit"
        if not services.claim(build_id):
            return "skipped: claimed elsewhere"
        status = BuildStatus.BUILDING
        attempt = emit.attempt = services.attempts_of(build_id)
        heart = _heartbeat(build_id, attempt)
        if attempt > 1:
            emit(_retry_header(attempt))
        emit(f"Building {build.image_ref} from {build.base_image} (runtime {build.runtime_version})")
        services.remove_build_contexts()  # what builds whose worker died on this machine left behind
        version = build.model_version
        # Under the var dir, named after the build and this attempt: never left behind for ever.
        folder = builds.context_dir(build_id, attempt)
        try:
            context = folder / "context"
            context.mkdir(parents=True)
            layout_args = builds.assemble_context(
                context,
                artifact_open=lambda: version.artifact.open("rb"),
                artifact_sha256=version.sha256,
                artifact_format=version.format,
                config=config,
            )
            image_id = builds.build_image(
                client,
                context,
                tag=build.image_ref,
                buildargs={**_buildargs(build), **layout_args},
                config=config,
                emit=emit,
            )
        finally:
            builds.remove_context(folder)
        emit.flush()
        if not services.transition(build_id, BuildStatus.BUILDING, BuildStatus.PUSHING, attempt=attempt):
            return _ended_elsewhere(build_id, attempt)
        status = BuildStatus.PUSHING
        emit(f"Pushing {build.image_ref}")
        digest = builds.push_image(client, build.image_ref, image_id=image_id, config=config, emit=emit)
        emit(f"Pushed {build.image_ref}@{digest}")
        emit.flush()
        size = builds.image_size(client, image_id)
        if not services.finish_build(
            build_id, BuildStatus.PUSHING, actor=system, attempt=attempt, digest=digest, size_bytes=size
        ):
            return _ended_elsewhere(build_id, attempt)
        return "succeeded"
    except _Superseded:
        return _ended_elsewhere(build_id, attempt)
    except builds.BuildCancelled:
        log.info("build %s was cancelled", build_id)
        return "cancelled"
    except builds.BuildFailed as exc:
        _finish_log(emit, f"FAILED: {exc}")
        if not services.fail_build(build_id, status, str(exc), actor=system, attempt=attempt):
            return _ended_elsewhere(build_id, attempt)
        return "failed"
    except Exception as exc:
        log.exception("build %s crashed", build_id)
        _finish_log(emit, f"FAILED: {type(exc).__name__}: {exc}")
        error = f"The build crashed ({type(exc).__name__}: {exc}); retry it."
        if not services.fail_build(build_id, status, error, actor=system, attempt=attempt):
            return _ended_elsewhere(build_id, attempt)
        return "failed"
    finally:
        if heart is not None:
            heart.stop()


def _retry_header(attempt: int) -> str:
    """The line where a retry's output begins, below what the attempts before it wrote into the log.

    A build claimed before is queued again only by the stale-build sweeper."""
    return (
        f"\n===== Attempt {attempt} (of at most {settings.SLIPWAY_BUILD_MAX_ATTEMPTS}): attempt {attempt - 1}'s "
        f"worker stopped answering (no heartbeat for {settings.SLIPWAY_BUILD_STALE_S:.0f}s), so the build was "
        "queued again ====="
    )


def _ended_elsewhere(build_id: int, attempt: int | None) -> str:
    """Why this worker could not write how its attempt ended: the build was cancelled meanwhile, or the
    sweeper took this worker for dead and a newer attempt claimed it (whose result is the one that counts)."""
    if attempt is not None and services.attempts_of(build_id) != attempt:
        log.warning("build %s: attempt %s was replaced by a newer one; it stopped, writing nothing", build_id, attempt)
        return "superseded"
    log.info("build %s ended while this worker was at it (cancelled?)", build_id)
    return "cancelled"


def _finish_log(emit: _LogSink, line: str) -> None:
    emit.pending.append(line + "\n")
    with contextlib.suppress(builds.BuildCancelled, _Superseded):
        emit.flush()


def _buildargs(build: ImageBuild) -> dict[str, str]:
    version = build.model_version
    return {
        "BASE_IMAGE": build.base_image,
        "RUNTIME_VERSION": build.runtime_version,
        "MODEL_NAME": version.model.name,
        "MODEL_VERSION": str(version.version),
        "MODEL_SHA256": version.sha256,
        "MODEL_SIGNATURE": json.dumps(version.signature, separators=(",", ":")) if version.signature else "",
    }


@shared_task
def recover_stale_builds() -> list[int]:
    return services.recover_stale_builds(actor=Actor.system())


@shared_task(acks_late=True, reject_on_worker_lost=True)
def advance_rollout(rollout_id: int, revision: int | None = None) -> str:
    from deployments import engine

    return engine.advance(rollout_id, revision)


@shared_task
def sweep_rollouts() -> list[int]:
    from deployments import engine

    return engine.sweep()
