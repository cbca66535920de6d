"""The registry's verbs. Each writes its rows and its audit event in one transaction."""

from __future__ import annotations

import logging
import os
import re
import unicodedata
import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.deletion import ProtectedError, RestrictedError
from django.utils import timezone

from controlplane import access
from controlplane.audit import Actor, record
from controlplane.errors import Conflict, InvalidInput, NotFound
from controlplane.models import Role
from controlplane.states import compare_and_set
from registry import uploads
from registry.artifacts import ArtifactRejected, inspect_artifact
from registry.models import (
    VERSION_TRANSITIONS,
    ArtifactFormat,
    Model,
    ModelVersion,
    VersionStatus,
    artifact_storage,
    slug_validator,
)
from registry.signatures import parse_metadata, parse_signature

log = logging.getLogger(__name__)

_MAX_FILENAME = 200
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_EXTENSIONS = {ArtifactFormat.TORCHSCRIPT: ".pt", ArtifactFormat.TORCH_EXPORT: ".pt2"}


def create_model(name: str, description: str = "", *, actor: Actor) -> Model:
    access.require_registry(actor, Role.DEPLOYER, "create models")
    name = (name or "").strip()
    try:
        slug_validator(name)
    except ValidationError as exc:
        raise InvalidInput(
            f"Model name {name!r} is not allowed. {exc.messages[0]}", fields={"name": exc.messages}
        ) from None
    try:
        with transaction.atomic():
            model = Model.objects.create(name=name, description=description or "", created_by=actor.user)
            record("model.create", actor=actor, target=model, after={"name": name, "description": model.description})
    except IntegrityError as exc:
        raise Conflict(
            f"A model named {name!r} already exists; upload a new version to it instead.", target=("model", "", name)
        ) from exc
    return model


def clean_filename(name: str) -> str:
    """The uploaded file's base name, safe to show and to put in a header."""
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable() and ch not in '"<>|*?')
    name = re.sub(r"\s+", " ", name).strip(" .")
    if len(name) > _MAX_FILENAME:
        stem, ext = os.path.splitext(name)
        ext = ext if len(ext) <= 16 else ""  # keep ".pt2" so a download still opens
        name = stem[: _MAX_FILENAME - len(ext)].rstrip(" .") + ext
    return name or "artifact"


def upload_version(
    model: Model,
    upload,
    *,
    actor: Actor,
    sha256: str | None = None,
    signature: Any = None,
    metadata: Any = None,
) -> ModelVersion:
    """Keep an uploaded artifact as the model's next version, then validate it.

    `upload` is a file streamed by registry.uploads.read_multipart (with .sha256).
    Everything that can be checked without loading the model is checked here;
    a refusal keeps nothing. Loading happens later, in the sandboxed validator.
    """
    try:
        access.require_registry(actor, Role.DEPLOYER, "upload versions")
        if sha256:
            sha256 = sha256.strip().lower()
            if not _SHA256.match(sha256):
                raise InvalidInput(
                    f"sha256 must be 64 hexadecimal characters, the SHA-256 of the file (sha256sum model.pt); "
                    f"got {len(sha256)} characters.",
                    fields={"sha256": ["not a SHA-256 hex digest"]},
                )
            if sha256 != upload.sha256:
                raise InvalidInput(
                    f"The artifact's SHA-256 is {upload.sha256}, not {sha256} as sent: the file changed "
                    "or was cut short on the way. Upload it again.",
                    fields={"sha256": ["does not match the uploaded file"]},
                )
        parsed_signature = parse_signature(signature)
        parsed_metadata = parse_metadata(metadata)
        try:
            info = inspect_artifact(
                upload,
                max_members=settings.SLIPWAY_ARCHIVE_MAX_MEMBERS,
                max_uncompressed=settings.SLIPWAY_ARCHIVE_MAX_UNCOMPRESSED_BYTES,
            )
        except ArtifactRejected as exc:
            raise InvalidInput(str(exc), fields={"artifact": [str(exc)]}) from exc
        if info.format == ArtifactFormat.TORCHSCRIPT and parsed_signature is None:
            raise InvalidInput(
                "A TorchScript archive does not record its input shapes: send a signature with the upload, "
                'for example signature={"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}.',
                fields={"signature": ["required for TorchScript"]},
            )

        storage = artifact_storage()
        stored_name = _store(storage, f"{model.name}/{uuid.uuid4().hex}{_EXTENSIONS[info.format]}", upload)
    finally:
        upload.close()  # removes the temporary file unless storage moved it

    try:
        with transaction.atomic():
            locked = Model.objects.select_for_update().get(pk=model.pk)
            locked.latest_version += 1
            locked.save(update_fields=["latest_version"])
            version = ModelVersion.objects.create(
                model=locked,
                version=locked.latest_version,
                artifact=stored_name,
                filename=clean_filename(upload.name),
                size=upload.size,
                sha256=upload.sha256,
                format=info.format,
                signature=parsed_signature or {},
                metadata=parsed_metadata,
                uploaded_by=actor.user,
            )
            record(
                "model_version.upload",
                actor=actor,
                target=version,
                after={
                    "version": version.version,
                    "sha256": version.sha256,
                    "size": version.size,
                    "format": version.format,
                    "filename": version.filename,
                },
            )
            transaction.on_commit(lambda: _enqueue_validation(version.pk))
    except BaseException:
        storage.delete(stored_name)
        raise
    return version


def _store(storage, name: str, upload) -> str:
    """Save into artifact storage; a save that fails part-way leaves no partial file behind.

    (Django's FileSystemStorage copies when the upload directory is on another filesystem,
    and keeps what it copied when the disk fills up.) The name is fresh, so whatever
    stands under it is this save's.
    """
    try:
        return storage.save(name, upload)
    except Exception as exc:
        try:
            if storage.exists(name):
                storage.delete(name)
        except Exception:
            log.exception("could not delete the partial artifact %s", name)
        if isinstance(exc, OSError) and exc.errno in uploads.FULL:
            raise uploads.storage_full(exc, "the artifact storage (SLIPWAY_ARTIFACT_ROOT)") from exc
        raise


def _enqueue_validation(version_id: int) -> None:
    from registry.tasks import validate_model_version

    validate_model_version.delay(version_id)


def _transition(version_id: int, expected: str, new: str, **fields) -> bool:
    return compare_and_set(ModelVersion, version_id, VERSION_TRANSITIONS, expected, new, **fields)


def start_validation(version_id: int) -> bool:
    return _transition(
        version_id,
        VersionStatus.PENDING,
        VersionStatus.VALIDATING,
        validation_started_at=timezone.now(),
        validation_attempts=F("validation_attempts") + 1,
    )


def finish_validation(version_id: int, result: dict, *, actor: Actor) -> ModelVersion | None:
    """Store the sandbox's verdict: ready with the measured facts, or rejected with a reason."""
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().select_related("model").filter(pk=version_id).first()
        if version is None or version.status != VersionStatus.VALIDATING:
            return None  # deleted meanwhile, or another worker got there first
        before = {"status": version.status}
        version.validated_at = timezone.now()
        if result.get("ok"):
            version.status = VersionStatus.READY
            version.signature = result["signature"]
            version.parameter_count = result.get("parameter_count")
            version.load_time_ms = result.get("load_time_ms")
            action = "model_version.validated"
            after = {
                "status": version.status,
                "parameter_count": version.parameter_count,
                "load_time_ms": version.load_time_ms,
                "isolation": result.get("isolation"),
            }
        else:
            version.status = VersionStatus.REJECTED
            version.rejection_reason = result.get("reason") or "Validation failed."
            action = "model_version.rejected"
            after = {"status": version.status, "reason": version.rejection_reason}
        version.save()
        record(action, actor=actor, target=version, before=before, after=after)
    return version


def requeue_stale_validations(*, older_than_s: float, actor: Actor) -> list[int]:
    """Put validations whose worker died back in the queue (a lost message only delays).

    A version whose validation has already started SLIPWAY_VALIDATION_MAX_ATTEMPTS times without a
    verdict is rejected instead: whatever stops it (a worker crash it causes, a failure storing its
    verdict) would otherwise run it again every few minutes for ever.
    """
    cutoff = timezone.now() - timezone.timedelta(seconds=older_than_s)
    stale = list(
        ModelVersion.objects.filter(status=VersionStatus.VALIDATING, validation_started_at__lt=cutoff).values_list(
            "pk", "validation_attempts"
        )
    )
    pending = ModelVersion.objects.filter(status=VersionStatus.PENDING, created_at__lt=cutoff)
    stale += [(pk, 0) for pk in pending.values_list("pk", flat=True)]
    limit = settings.SLIPWAY_VALIDATION_MAX_ATTEMPTS
    requeued = []
    for pk, attempts in stale:
        with transaction.atomic():
            if attempts >= limit:
                _give_up_validation(pk, attempts, older_than_s, actor=actor)
                continue
            moved = _transition(pk, VersionStatus.VALIDATING, VersionStatus.PENDING, validation_started_at=None)
            if moved:
                record(
                    "model_version.validation_requeued",
                    actor=actor,
                    target=("model_version", pk, f"version #{pk}"),
                    message=f"no verdict after {older_than_s:.0f}s (attempt {attempts} of {limit}); "
                    "the worker was probably lost",
                )
            transaction.on_commit(lambda pk=pk: _enqueue_validation(pk))
        requeued.append(pk)
    return requeued


def _give_up_validation(pk: int, attempts: int, older_than_s: float, *, actor: Actor) -> None:
    reason = (
        f"Validation started {attempts} times and never finished: each time the worker stopped without a "
        f"verdict (it crashed or was lost, or gave no answer within {older_than_s:.0f}s). Upload the artifact "
        "again to retry; if this happens again, an administrator will find the error in the worker's log."
    )
    fields = {"rejection_reason": reason, "validated_at": timezone.now()}
    if _transition(pk, VersionStatus.VALIDATING, VersionStatus.REJECTED, **fields):
        record(
            "model_version.rejected",
            actor=actor,
            target=ModelVersion.objects.select_related("model").get(pk=pk),
            before={"status": VersionStatus.VALIDATING},
            after={"status": VersionStatus.REJECTED, "reason": reason},
        )


# What upload_version names an artifact: <model>/<32 hex digits>.pt or .pt2. Nothing else in the storage is swept.
_ARTIFACT_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?/[0-9a-f]{32}\.pt2?")
ORPHAN_AGE_S = 3600


def remove_orphan_artifacts(*, actor: Actor, older_than_s: float = ORPHAN_AGE_S) -> list[str]:
    """Delete stored artifacts that no version refers to, and returns their names.

    A web process killed between storing an upload and committing its row leaves one, and so does a
    deletion whose file could not be removed. Only files older than `older_than_s`: an upload stores its
    file a moment before it commits the row that refers to it.
    """
    storage = artifact_storage()
    cutoff = timezone.now() - timezone.timedelta(seconds=older_than_s)
    try:
        directories, _ = storage.listdir("")
    except (FileNotFoundError, NotImplementedError):
        return []
    removed = []
    for directory in directories:
        names = [f"{directory}/{file}" for file in storage.listdir(directory)[1]]
        names = [name for name in names if _ARTIFACT_NAME.fullmatch(name)]
        referred = set(ModelVersion.objects.filter(artifact__in=names).values_list("artifact", flat=True))
        for name in names:
            try:
                if name in referred or storage.get_modified_time(name) >= cutoff:
                    continue
            except (FileNotFoundError, NotImplementedError):
                continue
            with transaction.atomic():
                record(
                    "model_version.orphan_artifact_delete",
                    actor=actor,
                    target=("artifact", "", name),
                    message=f"no version refers to it and it is over {older_than_s / 3600:g} h old: an upload "
                    "or deletion interrupted part-way left it",
                )
                transaction.on_commit(lambda name=name: storage.delete(name))
            removed.append(name)
    if removed:
        log.warning("deleted %d artifact(s) no version refers to: %s", len(removed), ", ".join(removed))
    return removed


def delete_version(version: ModelVersion, *, actor: Actor) -> None:
    """Delete a version and its artifact, unless something depends on it."""
    access.require_registry(actor, Role.ADMIN, "delete versions")
    name = version.artifact.name
    try:
        with transaction.atomic():
            # Only the version's row: a deploy that creates a deployment of the model needs the model's row
            # (for its foreign key) while it holds the version's lock (deployments.services._lock_version).
            locked = (
                ModelVersion.objects.select_for_update(of=("self",)).select_related("model").filter(pk=version.pk)
            ).first()
            if locked is None:
                raise NotFound(f"{version} was deleted already (by someone else, a moment ago).")
            snapshot = {"version": locked.version, "sha256": locked.sha256, "status": locked.status}
            record("model_version.delete", actor=actor, target=locked, before=snapshot)
            locked.delete()
            transaction.on_commit(lambda: artifact_storage().delete(name))
    except (ProtectedError, RestrictedError) as exc:
        objects = getattr(exc, "protected_objects", None) or getattr(exc, "restricted_objects", ())
        users = sorted({str(obj) for obj in objects})
        raise Conflict(
            f"{version} cannot be deleted: {', '.join(users) or 'a deployment'} "
            f"{'refers' if len(users) <= 1 else 'refer'} to it, and builds and releases "
            "are kept for the history (what ran where, and when). Only a version never built or deployed can be "
            "deleted; a version nobody should deploy again can simply be left alone."
        ) from exc


def artifact_path(version: ModelVersion) -> str | None:
    """The artifact's local path when the storage has one (FileSystemStorage)."""
    try:
        return os.fspath(version.artifact.path)
    except NotImplementedError:
        return None
