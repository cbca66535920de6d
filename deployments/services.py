"""Deployment verbs. Each writes its rows and its audit event in one transaction."""

from __future__ import annotations

import hashlib
import logging
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from controlplane import access
from controlplane.audit import Actor, record
from controlplane.errors import Conflict, Forbidden, InvalidInput, NotFound
from controlplane.models import Outcome, Role
from controlplane.states import compare_and_set
from deployments import approvals, builds
from deployments.builds import DOCKERFILE, RUNTIME_PACKAGE, image_ref
from deployments.models import (
    BUILD_ACTIVE,
    BUILD_TRANSITIONS,
    ROLLOUT_ACTIVE,
    BuildStatus,
    Deployment,
    Environment,
    ImageBuild,
    Release,
    ReleaseKind,
    Rollout,
    RolloutEvent,
    RolloutState,
    TargetKind,
    Variant,
)
from deployments.plans import ROLLBACK_PLAN, InvalidPlan, compile_plan
from deployments.runtime_settings import InvalidSettings, parse_runtime_settings, settings_to_dict
from registry.models import ModelVersion, VersionStatus, slug_validator

log = logging.getLogger(__name__)


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
    access.require_registry(actor, Role.DEPLOYER, "build images")
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
    base_image, runtime, registry = base_image_for(variant), runtime_version(), settings.SLIPWAY_REGISTRY
    existing = _live_build(version, variant, runtime, base_image, registry)
    if existing is not None:
        return existing, False
    ref = image_ref(
        registry,
        version.model.name,
        version.version,
        version.sha256,
        variant,
        runtime_version=runtime,
        base_image=base_image,
    )
    try:
        with transaction.atomic():
            _lock_version(version, "build was being requested", "build")
            build = ImageBuild.objects.create(
                model_version=version,
                variant=variant,
                base_image=base_image,
                runtime_version=runtime,
                registry=registry,
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
        existing = _live_build(version, variant, runtime, base_image, registry)
        if existing is None:
            raise
        return existing, False
    return build, True


def _lock_version(version: ModelVersion, happening: str, verb: str) -> ModelVersion:
    """Hold `version`'s row until the transaction ends, before writing a build or release that refers to it.

    registry.services.delete_version locks the row FOR UPDATE, then checks that nothing refers to it: this lock
    waits for a delete in progress (which then leaves nothing to lock: a clear refusal, not a foreign-key
    error at commit), and makes a delete that comes later wait until what refers to the version is committed
    (it then finds it, and refuses). NO KEY: two builds or deploys of one version only wait for each other.
    """
    locked = (
        ModelVersion.objects.select_for_update(no_key=True, of=("self",))
        .select_related("model")
        .filter(pk=version.pk)
        .first()
    )
    if locked is None:
        raise Conflict(
            f"{version} was deleted while this {happening}: {verb} another version of {version.model.name}.",
            target=("model_version", version.pk, str(version)),
        )
    return locked


def _live_build(version: ModelVersion, variant: str, runtime: str, base_image: str, registry: str) -> ImageBuild | None:
    """The build that answers a request for this image: the key of `one_live_build_per_image`."""
    return (
        ImageBuild.objects.filter(
            model_version=version, variant=variant, runtime_version=runtime, base_image=base_image, registry=registry
        )
        .exclude(status__in=[BuildStatus.FAILED, BuildStatus.CANCELLED])
        .first()
    )


def _enqueue(build_id: int) -> None:
    from deployments.tasks import run_image_build

    run_image_build.delay(build_id)


def transition(build_id: int, expected: str, new: str, *, attempt: int | None = None, **fields) -> bool:
    """Move the build on; with `attempt`, only while that attempt is still the build's latest.

    A worker the sweeper took for dead may still be running its attempt after another worker claimed
    the next one: whatever it writes must name its attempt, or it would end the newer attempt's build.
    """
    where = None if attempt is None else {"attempts": attempt}
    return compare_and_set(ImageBuild, build_id, BUILD_TRANSITIONS, expected, new, where=where, **fields)


def claim(build_id: int) -> bool:
    now = timezone.now()
    return transition(
        build_id, BuildStatus.QUEUED, BuildStatus.BUILDING, started_at=now, heartbeat_at=now, attempts=F("attempts") + 1
    )


def attempts_of(build_id: int) -> int:
    """How many times the build has been claimed: the number of the attempt that claimed it last."""
    return ImageBuild.objects.filter(pk=build_id).values_list("attempts", flat=True).get()


def remove_build_contexts() -> list[str]:
    """Remove this machine's build contexts that no running attempt uses; their names.

    A context (builds.context_dir) holds a full copy of the model and of the CA bundle, and lives while
    its attempt builds: the task removes it when the attempt ends, however it ends. A worker killed
    mid-build leaves it; so does an attempt whose build was recovered, failed or cancelled meanwhile.
    The folders are listed before the statuses are read: a folder made after the listing belongs to a
    claim the statuses may not show yet, and is not in the listing. The current attempt of a build that
    has just ended (cancelled) may still have its worker reading its context until it notices: it is
    left to that worker unless the build has not been heard from for SLIPWAY_BUILD_STALE_S.
    """
    found = builds.contexts_on_disk()
    if not found:
        return []
    silent_since = timezone.now() - timezone.timedelta(seconds=settings.SLIPWAY_BUILD_STALE_S)
    builds_found = ImageBuild.objects.filter(pk__in={pk for pk, _ in found.values()})
    in_use = set()
    for pk, status, attempts, heartbeat_at in builds_found.values_list("pk", "status", "attempts", "heartbeat_at"):
        if status == BuildStatus.BUILDING or (heartbeat_at is not None and heartbeat_at > silent_since):
            in_use.add((pk, attempts))  # its worker runs it, or may not have noticed its end yet
    return [path.name for path, key in sorted(found.items()) if key not in in_use and builds.remove_context(path)]


def append_log(build_id: int, text: str, attempt: int | None = None) -> str | None:
    """Append to the build's log and beat its heart; returns the build's current status.

    With `attempt`: None, and nothing written, once a newer attempt has claimed the build.
    """
    rows = ImageBuild.objects.filter(pk=build_id)
    if attempt is not None:
        rows = rows.filter(attempts=attempt)
    rows.update(log=Concat(F("log"), Value(text)), heartbeat_at=timezone.now())
    return rows.values_list("status", flat=True).first()


def finish_build(
    build_id: int, expected: str, *, actor: Actor, attempt: int | None = None, cache_hit: bool = False, **facts
) -> bool:
    return _end(build_id, expected, BuildStatus.SUCCEEDED, actor=actor, attempt=attempt, cache_hit=cache_hit, **facts)


def fail_build(build_id: int, expected: str, error: str, *, actor: Actor, attempt: int | None = None) -> bool:
    return _end(build_id, expected, BuildStatus.FAILED, actor=actor, attempt=attempt, error=error)


def _end(build_id: int, expected: str, new: str, *, actor: Actor, attempt: int | None, **fields) -> bool:
    """Move a build to a terminal status and record it, unless it (or its attempt) moved on meanwhile."""
    with transaction.atomic():
        if not transition(build_id, expected, new, attempt=attempt, finished_at=timezone.now(), **fields):
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
    access.require_registry(actor, Role.DEPLOYER, "cancel builds")
    with transaction.atomic():
        locked = ImageBuild.objects.select_for_update().get(pk=build.pk)
        if locked.status not in BUILD_ACTIVE:
            raise Conflict(f"{locked} is already {locked.status}; only a queued or running build can be cancelled.")
        # A rollout waiting for the build fails when it is cancelled: only someone who may abort it may.
        waiting = Rollout.objects.filter(release__build=locked, state__in=ROLLOUT_ACTIVE)
        if any(
            not access.can(actor, Role.DEPLOYER, rollout.deployment.environment)
            for rollout in waiting.select_related("deployment__environment")
        ):
            raise Forbidden(
                "Rollouts that you may not abort wait for this build, and would fail if it were cancelled: "
                "ask a deployer of their environment to abort them, or to cancel the build."
            )
        before = locked.status
        transition(locked.pk, before, BuildStatus.CANCELLED, finished_at=timezone.now())
        locked.refresh_from_db()
        record(
            "image_build.cancel", actor=actor, target=locked, before={"status": before}, after={"status": "cancelled"}
        )
        # The worker removes the context when it notices. Not here: this may run while that worker still reads
        # it (its next log line tells it of the cancel); the build sweeper removes what a dead worker left.
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
                    attempt=attempts,
                )
            elif transition(pk, status, BuildStatus.QUEUED, attempt=attempts, heartbeat_at=None):
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
    # The contexts of the attempts just recovered, and of any other build that no longer runs here.
    removed = remove_build_contexts()
    if removed:
        log.info("removed build contexts left behind: %s", ", ".join(removed))
    return recovered


# --- Environments, deployments, rollouts ------------------------------------------------
def create_environment(
    name: str,
    *,
    actor: Actor,
    target: str = TargetKind.LOCAL,
    target_config: dict | None = None,
    promotes_from: str | None = None,
    description: str = "",
    default_plan: dict | None = None,
    default_settings: dict | None = None,
    required_approvals: int = 0,
    approval_timeout_s: int = 86400,
    approve_pauses: bool = False,
) -> Environment:
    access.require_everywhere(actor, Role.ADMIN, "create environments")
    _check_environment_name(name)
    if target not in TargetKind.values:
        raise InvalidInput(f"target must be one of {', '.join(TargetKind.values)}.", fields={"target": ["unknown"]})
    config = _target_config(target, target_config or {})
    source = None
    if promotes_from:
        source = Environment.objects.filter(name=promotes_from).first()
        if source is None:
            raise InvalidInput(
                f"There is no environment {promotes_from!r} to promote from: create it first.",
                fields={"promotes_from": ["unknown environment"]},
            )
    _check_defaults(default_plan, default_settings)
    protection = _protection(required_approvals, approval_timeout_s, approve_pauses)
    try:
        with transaction.atomic():
            env = Environment.objects.create(
                name=name,
                description=description,
                target=target,
                target_config=config,
                promotes_from=source,
                default_plan=default_plan or {},
                default_settings=default_settings or {},
                created_by=actor.user,
                **protection,
            )
            record(
                "environment.create",
                actor=actor,
                target=env,
                after={"target": target, "promotes_from": promotes_from, "target_config": config, **protection},
                environment=env.name,
            )
    except IntegrityError:
        raise Conflict(
            f"An environment named {name!r} already exists.",
            fields={"name": ["taken"]},
            target=("environment", "", name),
        ) from None
    return env


def _check_defaults(default_plan: dict | None, default_settings: dict | None) -> None:
    """An environment's default settings must parse, and its default plan compile with them."""
    settings_ = _runtime_settings(default_settings or {}, field="default_settings")
    try:
        compile_plan(default_plan or None, replicas=settings_["replicas"])
    except InvalidPlan as exc:
        raise InvalidInput(f"The default plan is not valid: {exc}", fields={"default_plan": [str(exc)]}) from None


def _protection(required_approvals, approval_timeout_s, approve_pauses) -> dict:
    try:
        required = int(required_approvals)
        timeout = int(approval_timeout_s)
    except (TypeError, ValueError):
        raise InvalidInput(
            "required_approvals and approval_timeout_s must be whole numbers.",
            fields={"required_approvals": ["a whole number"], "approval_timeout_s": ["a whole number"]},
        ) from None
    if not 0 <= required <= 10:
        raise InvalidInput(
            "required_approvals must be from 0 (not protected) to 10.", fields={"required_approvals": ["0 to 10"]}
        )
    if not 60 <= timeout <= 30 * 86400:
        raise InvalidInput(
            "approval_timeout_s must be from 60 (a minute) to 2592000 (30 days).",
            fields={"approval_timeout_s": ["60 to 2592000"]},
        )
    return {"required_approvals": required, "approval_timeout_s": timeout, "approve_pauses": bool(approve_pauses)}


PROTECTION_FIELDS = ("required_approvals", "approval_timeout_s", "approve_pauses")


def update_environment(env: Environment, *, actor: Actor, **changes) -> Environment:
    """Change an environment's description, default plan and settings, or protection (its admins)."""
    access.require(actor, Role.ADMIN, env, "change the environment's settings")
    allowed = {"description", "default_plan", "default_settings", *PROTECTION_FIELDS}
    unknown = sorted(set(changes) - allowed)
    if unknown:
        raise InvalidInput(
            f"These cannot be changed: {', '.join(unknown)}. Changeable: {', '.join(sorted(allowed))}.",
            fields={name: ["not changeable"] for name in unknown},
        )
    with transaction.atomic():
        locked = Environment.objects.select_for_update().get(pk=env.pk)
        current = {name: getattr(locked, name) for name in allowed}
        wanted = {**current, **changes}
        wanted.update(_protection(*(wanted[name] for name in PROTECTION_FIELDS)))
        _check_defaults(wanted["default_plan"], wanted["default_settings"])
        wanted["description"] = str(wanted["description"] or "")
        wanted["default_plan"] = wanted["default_plan"] or {}
        wanted["default_settings"] = wanted["default_settings"] or {}
        changed = {name: value for name, value in wanted.items() if value != current[name]}
        if changed:
            Environment.objects.filter(pk=locked.pk).update(**changed)
            record(
                "environment.update",
                actor=actor,
                target=locked,
                before={name: current[name] for name in changed},
                after=changed,
                environment=locked.name,
            )
    env.refresh_from_db()
    return env


def _check_environment_name(name: str) -> None:
    """The API's serializer checks this too; the browser's form reaches the service directly."""
    limit = Environment._meta.get_field("name").max_length
    try:
        slug_validator(name)
        if len(name) > limit:
            raise ValidationError(f"Use at most {limit} characters.")
    except ValidationError as exc:
        raise InvalidInput(
            f"Environment name {name!r} is not allowed. {exc.messages[0]}", fields={"name": exc.messages}
        ) from None


def _target_config(target: str, config: dict) -> dict:
    if not isinstance(config, dict):
        raise InvalidInput("target_config must be an object.", fields={"target_config": ["not an object"]})
    if target == TargetKind.LOCAL:
        if config:
            raise InvalidInput(
                "The local target takes no settings: leave target_config empty.",
                fields={"target_config": ["must be empty for the local target"]},
            )
        return {}
    from deployments.targets.kubernetes import validate_config

    try:
        return validate_config(config)
    except ValueError as exc:
        raise InvalidInput(
            f"The Kubernetes settings are not valid: {exc}", fields={"target_config": [str(exc)]}
        ) from None


def _runtime_settings(data: dict, base: dict | None = None, *, field: str = "config") -> dict:
    if not isinstance(data, dict):
        raise InvalidInput(
            f'{field} must be a JSON object of runtime settings, e.g. {{"replicas": 2}}.',
            fields={field: ["not an object"]},
        )
    try:
        merged = parse_runtime_settings({**(base or {}), **(data or {})})
    except InvalidSettings as exc:
        raise InvalidInput(f"The runtime settings are not valid: {exc}", fields=exc.fields) from None
    return settings_to_dict(merged)


def deployment_key(model_name: str, environment: str, *, hashed: bool = False) -> str:
    """A DNS-1035 label of at most 40 characters for (model, environment): `<model>-<env>` where that fits.

    `<model>-<env>` is not unique on its own (fraud in eu-prod, fraud-eu in prod): `hashed`
    gives the form with a digest of the pair, which _deployment_for uses when the short one is taken.
    """
    key = f"{model_name}-{environment}"
    if not hashed and len(key) <= 40 and key[0].isalpha():
        return key
    digest = hashlib.sha256(f"{model_name}/{environment}".encode()).hexdigest()[:8]
    head = f"m{model_name}" if not model_name[0].isalpha() else model_name
    env = environment[:20]
    # head-env-digest: at least 10 characters of the model's name, which starts with a letter.
    return f"{head[: 30 - len(env)].rstrip('-')}-{env}-{digest}"


def deploy(
    model_name: str,
    environment: str,
    version: int,
    *,
    actor: Actor,
    plan: dict | None = None,
    config: dict | None = None,
    reason: str = "",
) -> tuple[Deployment, Rollout, bool]:
    """Start rolling `version` out to `environment`. (deployment, rollout, created the deployment)."""
    env = Environment.objects.filter(name=environment).first()
    if env is None:
        raise NotFound(f"There is no environment {environment!r}.", fields={"environment": ["unknown"]})
    access.require(actor, Role.DEPLOYER, env, "deploy")
    model_version = ModelVersion.objects.select_related("model").filter(model__name=model_name, version=version).first()
    if model_version is None:
        raise NotFound(f"There is no version {version} of model {model_name!r}.", fields={"version": ["unknown"]})
    return _start(env, model_version, actor=actor, plan=plan, config=config, reason=reason, kind=ReleaseKind.DEPLOY)


def _deployment_for(env: Environment, model_version: ModelVersion, actor: Actor) -> tuple[Deployment, bool]:
    model = model_version.model
    existing = Deployment.objects.filter(model=model, environment=env).first()
    if existing is not None:
        return existing, False
    for hashed in (False, True):
        key = deployment_key(model.name, env.name, hashed=hashed)
        if not hashed and Deployment.objects.filter(key=key).exists():
            continue  # another model and environment read the same joined: e.g. fraud in eu-prod, fraud-eu in prod
        try:
            with transaction.atomic():
                deployment = Deployment.objects.create(model=model, environment=env, key=key, created_by=actor.user)
                record(
                    "deployment.create",
                    actor=actor,
                    target=deployment,
                    after={"key": deployment.key},
                    environment=env.name,
                )
            return deployment, True
        except IntegrityError:
            existing = Deployment.objects.filter(model=model, environment=env).first()
            if existing is not None:  # a deploy of the same model to the same environment won the race
                return existing, False
            # else the key was taken meanwhile by another (model, environment): try the hashed form
    raise Conflict(f"Could not name a deployment of {model.name} in {env.name}: try again.")


def _start(
    env: Environment,
    model_version: ModelVersion,
    *,
    actor: Actor,
    plan: dict | None,
    config: dict | None,
    reason: str,
    kind: str,
    source: Release | None = None,
    image: str = "",
    build: ImageBuild | None = None,
) -> tuple[Deployment, Rollout, bool]:
    if model_version.status != VersionStatus.READY:
        raise Conflict(
            f"{model_version} is {model_version.status}: only a ready version can be deployed.", target=model_version
        )
    with transaction.atomic():
        # First, before the deployment's lock (every writer takes the version's, then the deployment's).
        _lock_version(model_version, f"{kind} was being started", "deploy")
        # Created in the same transaction as its first rollout: a refused deploy leaves no deployment,
        # and of two first deploys racing, the one that creates the deployment is the one that wins.
        deployment, created = _deployment_for(env, model_version, actor)
        deployment = (
            Deployment.objects.select_for_update(of=("self",)).select_related("current_release").get(pk=deployment.pk)
        )
        active = deployment.rollouts.filter(state__in=ROLLOUT_ACTIVE).first()
        if active is not None:
            raise Conflict(
                f"Rollout #{active.pk} of {deployment} is {active.state}: wait for it to end, or abort it first."
            )
        current = deployment.current_release
        base = current.settings if current is not None else env.default_settings
        runtime = _runtime_settings(config or {}, base)
        try:
            normalised, steps = compile_plan(
                plan if plan is not None else env.default_plan, replicas=runtime["replicas"], first=current is None
            )
        except InvalidPlan as exc:
            raise InvalidInput(
                f"The plan is not valid: {exc}",
                fields={k if k == "plan" else f"plan.{k}": v for k, v in exc.fields.items()},
            ) from None
        number = deployment.latest_release + 1
        Deployment.objects.filter(pk=deployment.pk).update(latest_release=number)
        if source is None and kind != ReleaseKind.ROLLBACK:
            image, build = _reusable_image(model_version, env)
        slot = number
        warm = deployment.warm_until is not None and deployment.warm_until > timezone.now()
        if kind == ReleaseKind.ROLLBACK and warm and deployment.warm_release_id == source.pk:
            slot = source.slot  # still up without traffic: take it over instead of starting it again
        release = Release.objects.create(
            deployment=deployment,
            number=number,
            slot=slot,
            model_version=model_version,
            settings=runtime,
            kind=kind,
            source=source,
            reason=reason,
            image=image,
            build=build,
            created_by=actor.user,
        )
        try:
            with transaction.atomic():
                rollout = Rollout.objects.create(
                    deployment=deployment,
                    release=release,
                    previous_release=current,
                    plan=normalised,
                    steps=steps,
                    requested_by=actor.user,
                    state=RolloutState.AWAITING_APPROVAL if env.is_protected else RolloutState.PENDING,
                )
        except IntegrityError:
            raise Conflict(
                f"Another rollout of {deployment} started at the same moment: try again when it ends."
            ) from None
        RolloutEvent.objects.create(
            rollout=rollout,
            kind="action",
            message=f"{actor.label} started a {kind} of {model_version} as release {number}"
            + (f": {reason}" if reason else ""),
        )
        record(
            f"deployment.{kind}",
            actor=actor,
            target=deployment,
            before={"release": current.number if current else None},
            after={
                "release": number,
                "version": model_version.version,
                "image": image,
                "settings": runtime,
                "plan": normalised,
                "rollout": rollout.pk,
            },
            message=reason,
            environment=env.name,
        )
        if env.is_protected:
            approvals.open_request(rollout, env, actor=actor, reason=reason)
        else:
            transaction.on_commit(lambda: _advance(rollout.pk, 0))
    deployment.refresh_from_db()
    return deployment, rollout, created


def _reusable_image(model_version: ModelVersion, env: Environment) -> tuple[str, ImageBuild | None]:
    """An image already built for this version (on any deployment): no rebuild for a promote."""
    if env.target == TargetKind.LOCAL:
        return "", None
    earlier = Release.objects.filter(model_version=model_version).exclude(image="").order_by("-created_at").first()
    return (earlier.image, earlier.build) if earlier else ("", None)


def _advance(rollout_id: int, revision: int) -> None:
    from deployments.engine import enqueue

    enqueue(rollout_id, revision)


def promote(
    deployment: Deployment, *, actor: Actor, environment: str | None = None, reason: str = "", plan: dict | None = None
):
    """Roll what is live in `deployment` out to the next environment, with that environment's plan."""
    access.require(actor, Role.VIEWER, deployment.environment, "promote from it")
    current = deployment.current_release
    if current is None:
        raise Conflict(f"Nothing serves in {deployment} yet: deploy a version there before promoting it.")
    # Only environments the actor has a role in: the others do not exist for them, not even by name.
    nexts = list(access.scope(Environment.objects.filter(promotes_from=deployment.environment), actor, field="pk"))
    if environment:
        nexts = [env for env in nexts if env.name == environment]
        if not nexts:
            raise InvalidInput(
                f"{environment!r} does not promote from {deployment.environment.name}.",
                fields={"environment": ["not a next environment"]},
            )
    if not nexts:
        raise Conflict(f"No environment promotes from {deployment.environment.name}: set one's promotes_from first.")
    if len(nexts) > 1:
        names = ", ".join(env.name for env in nexts)
        raise InvalidInput(
            f"Several environments promote from {deployment.environment.name} ({names}): say which one.",
            fields={"environment": ["required"]},
        )
    env = nexts[0]
    access.require(actor, Role.DEPLOYER, env, f"promote into {env.name}")
    downstream = Deployment.objects.filter(model=deployment.model, environment=env).first()
    if downstream is not None and downstream.pinned:
        raise Conflict(
            f"{downstream} is pinned after a rollback ({downstream.pinned_reason}): unpin it before promoting into it."
        )
    same_kind = env.target == deployment.environment.target
    return _start(
        env,
        current.model_version,
        actor=actor,
        plan=plan,
        config=None,
        reason=reason or f"promoted from {deployment.environment.name} release {current.number}",
        kind=ReleaseKind.PROMOTE,
        source=current,
        image=current.image if same_kind else "",
        build=current.build if same_kind else None,
    )


def rollback(deployment: Deployment, *, actor: Actor, reason: str, to_release: int | None = None):
    """A new release that restores an earlier one: same version, same image, same settings; no build."""
    access.require(actor, Role.DEPLOYER, deployment.environment, "roll back")
    if not reason or not reason.strip():
        raise InvalidInput("Say why you roll back: a reason is required.", fields={"reason": ["required"]})
    active = deployment.rollouts.filter(state__in=ROLLOUT_ACTIVE).first()
    if active is not None:
        raise Conflict(
            f"Rollout #{active.pk} is {active.state}: abort it to go back to what served before it, "
            "then roll back if you need an older release."
        )
    current = deployment.current_release
    if to_release is not None:
        target = deployment.releases.filter(number=to_release).first()
        if target is None:
            raise NotFound(f"{deployment} has no release {to_release}.", fields={"to_release": ["unknown"]})
    else:
        target = (
            deployment.releases.filter(rollout__state=RolloutState.SUCCEEDED)
            .exclude(pk=current.pk if current else None)
            .order_by("-number")
            .first()
        )
        if target is None:
            raise Conflict(f"{deployment} has no earlier successful release to roll back to.")
    if current is not None and target.pk == current.pk:
        raise Conflict(f"Release {target.number} is what serves now: choose another release to roll back to.")
    if deployment.environment.target != TargetKind.LOCAL and not target.image:
        raise Conflict(f"Release {target.number} never got an image: deploy its version instead.")
    with transaction.atomic():
        result = _start(
            deployment.environment,
            target.model_version,
            actor=actor,
            plan=ROLLBACK_PLAN,
            config=target.settings,
            reason=reason,
            kind=ReleaseKind.ROLLBACK,
            source=target,
            image=target.image,
            build=target.build,
        )
        # Not pinned yet: the engine pins the deployment once the rollback's release serves (engine._pin).
        # Meanwhile the rollout itself refuses promotions; a rollback rejected, expired, aborted or failed
        # pins nothing, so a pin always means that something was rolled back.
    result[0].refresh_from_db()
    return result


def unpin(deployment: Deployment, *, actor: Actor) -> tuple[Deployment, bool]:
    """Unpin `deployment`; (the deployment, whether it was pinned when its row was locked)."""
    access.require(actor, Role.DEPLOYER, deployment.environment, "unpin deployments")
    with transaction.atomic():
        pinned, reason = (
            Deployment.objects.select_for_update(of=("self",))
            .filter(pk=deployment.pk)
            .values_list("pinned", "pinned_reason")
            .get()
        )
        # Not pinned (never, or someone unpinned it a moment ago): nothing changes and nothing is recorded,
        # as a role granted again or a token revoked again.
        if pinned:
            Deployment.objects.filter(pk=deployment.pk).update(pinned=False, pinned_reason="")
            record(
                "deployment.unpin",
                actor=actor,
                target=deployment,
                before={"pinned": True, "pinned_reason": reason},
                after={"pinned": False},
                environment=deployment.environment.name,
            )
    deployment.refresh_from_db()
    return deployment, pinned


# --- A person's hand on a running rollout ----------------------------------------------
# The states each action accepts; the pages show a button only where its action would be taken.
PAUSABLE = frozenset({RolloutState.PROGRESSING})
RESUMABLE = frozenset({RolloutState.PAUSED})
ABORTABLE = frozenset(
    {
        RolloutState.AWAITING_APPROVAL,
        RolloutState.PENDING,
        RolloutState.BUILDING,
        RolloutState.DEPLOYING,
        RolloutState.PROGRESSING,
        RolloutState.PAUSED,
    }
)
PROMOTABLE_NOW = frozenset({RolloutState.DEPLOYING, RolloutState.PROGRESSING, RolloutState.PAUSED})


def pause_rollout(rollout: Rollout, *, actor: Actor) -> Rollout:
    return _act(
        rollout,
        "pause",
        actor,
        PAUSABLE,
        lambda r: {
            "state": RolloutState.PAUSED,
            "pause_reason": f"paused by {actor.label}",
            "paused_at": timezone.now(),
        },
    )


def resume_rollout(rollout: Rollout, *, actor: Actor) -> Rollout:
    def change(r: Rollout) -> dict:
        waiting = approvals.pending_pause_request(r)
        if waiting is not None:
            raise Conflict(
                f"{r} waits for {waiting.required} approval(s) to go on (request #{waiting.pk}): "
                "approvers approve it on the Approvals page; it cannot be resumed by hand."
            )
        now = timezone.now()
        fields = {"state": RolloutState.PROGRESSING, "pause_reason": "", "paused_at": None}
        step = r.current_step
        if step and step["kind"] == "pause" and step["duration_s"] is None:  # the plan's pause: move past it
            fields.update(step_index=r.step_index + 1, step_started_at=now)
        elif r.paused_at is not None and r.step_started_at is not None:
            # The step's clock stood still while a person held it: its deadline (readiness, a timed
            # pause) counts only the time it ran, so a long look at a canary does not fail it on resume.
            fields["step_started_at"] = r.step_started_at + (now - r.paused_at)
        return fields

    return _act(rollout, "resume", actor, RESUMABLE, change)


def abort_rollout(rollout: Rollout, *, actor: Actor, reason: str = "") -> Rollout:
    return _act(
        rollout,
        "abort",
        actor,
        ABORTABLE,
        lambda r: _abort_fields(r, actor, reason),
    )


def _abort_fields(rollout: Rollout, actor: Actor, reason: str) -> dict:
    why = f"Aborted by {actor.label}" + (f": {reason}" if reason else "")
    approvals.cancel_for(rollout, actor=actor, why=why)
    if rollout.state in (RolloutState.AWAITING_APPROVAL, RolloutState.PENDING, RolloutState.BUILDING):
        return {"state": RolloutState.ABORTED, "failure_reason": why, "finished_at": timezone.now()}
    return {
        "state": RolloutState.REVERTING,
        "revert_to": RolloutState.ABORTED,
        "failure_reason": why,
        "step_started_at": timezone.now(),
    }


def promote_rollout_now(rollout: Rollout, *, actor: Actor) -> Rollout:
    def change(r: Rollout) -> dict:
        if approvals.waits_for_pause_approval(r):
            raise Conflict(
                f"{r.deployment.environment.name} requires approvals at each pause step: promote-now would skip "
                "them. Let the plan run, or abort and deploy with a plan without pauses."
            )
        return {
            "state": RolloutState.PROGRESSING if r.state == RolloutState.PAUSED else r.state,
            "skip_steps": True,
            "pause_reason": "",
            "paused_at": None,
            "step_started_at": timezone.now(),  # all traffic to the release is a step of its own, with its deadline
        }

    return _act(rollout, "promote", actor, PROMOTABLE_NOW, change)


def _act(rollout: Rollout, verb: str, actor: Actor, allowed: frozenset[str], change) -> Rollout:
    from deployments.engine import check_transition

    with transaction.atomic():
        locked = (
            Rollout.objects.select_for_update(of=("self",)).select_related("deployment__environment").get(pk=rollout.pk)
        )
        environment = locked.deployment.environment.name  # refresh_from_db() below forgets related rows
        access.require(actor, Role.DEPLOYER, locked.deployment.environment, f"{verb} rollouts")
        if locked.state not in allowed:
            states = " or ".join(sorted(allowed))
            raise Conflict(f"{locked} is {locked.state}: only a {states} rollout can {verb}.")
        fields = change(locked)
        check_transition(locked.state, fields.get("state", locked.state))
        before = locked.state
        Rollout.objects.filter(pk=locked.pk).update(
            **fields,
            revision=F("revision") + 1,
            next_at=timezone.now(),
            updated_at=timezone.now(),
            retrying_since=None,  # what the person asked for gets the whole deadline of retries
        )
        locked.refresh_from_db()
        message = f"{actor.label}: {verb}"
        RolloutEvent.objects.create(rollout=locked, kind="action", message=message)
        if locked.state != before:
            RolloutEvent.objects.create(
                rollout=locked, kind="transition", message=f"{before} → {locked.state}", data={"from": before}
            )
        record(
            f"rollout.{verb}",
            actor=actor,
            target=locked,
            before={"state": before},
            after={"state": locked.state},
            environment=environment,
        )
        if locked.state in ROLLOUT_ACTIVE:
            revision = locked.revision
            transaction.on_commit(lambda: _advance(locked.pk, revision))
    return locked
