"""Build a runtime image for one model version with the Docker SDK, and push it.

The steps are small functions so the task can stream each one's log into the
build row, notice a cancellation between log lines, and turn every failure into
a message a person can act on. Registry credentials go to the engine in the
push call only: never into the build context, build arguments or log.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:  # the Docker SDK is imported where it is used: only the worker builds, not the web server
    import docker

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "runtime.Dockerfile"
RUNTIME_PACKAGE = ROOT / "inference_runtime"
_MODEL_FILES = {"torchscript": "model.pt", "torch_export": "model.pt2"}


class BuildFailed(Exception):
    """A build step failed; the message says what to do about it."""


class BuildCancelled(Exception):
    pass


@dataclass(frozen=True)
class BuildConfig:
    registry: str
    username: str = ""
    password: str = field(default="", repr=False)
    network_mode: str = ""
    ca_bundle: str = ""
    pip_index_url: str = ""
    pip_extra_index_url: str = ""
    wheelhouse: str = ""
    pip_offline: bool = False
    timeout_s: float = 3600.0

    @classmethod
    def from_settings(cls) -> BuildConfig:
        return cls(
            registry=settings.SLIPWAY_REGISTRY,
            username=settings.SLIPWAY_REGISTRY_USERNAME,
            password=settings.SLIPWAY_REGISTRY_PASSWORD,
            network_mode=settings.SLIPWAY_BUILD_NETWORK_MODE,
            ca_bundle=settings.SLIPWAY_BUILD_CA_BUNDLE,
            pip_index_url=settings.SLIPWAY_PIP_INDEX_URL,
            pip_extra_index_url=settings.SLIPWAY_PIP_EXTRA_INDEX_URL,
            wheelhouse=settings.SLIPWAY_WHEELHOUSE,
            pip_offline=settings.SLIPWAY_PIP_OFFLINE,
            timeout_s=settings.SLIPWAY_BUILD_TIMEOUT_S,
        )

    @property
    def auth_config(self) -> dict | None:
        if not self.username:
            return None
        return {"username": self.username, "password": self.password}


def image_ref(
    registry: str, model_name: str, version: int, sha256: str, variant: str, *, runtime_version: str, base_image: str
) -> str:
    """Content-addressed: the tag names the artifact's digest and what the image is built from.

    `v<version>-<sha12>-<recipe8>[-cpu]`, where recipe8 digests the runtime version and the base
    image: a tag the registry already holds is then a cache hit only for the very same image. (With
    the artifact alone, an image built before Slipway's runtime or SLIPWAY_BASE_IMAGE_* changed was
    taken for the new build.)
    """
    recipe = hashlib.sha256(f"{runtime_version}\n{base_image}".encode()).hexdigest()[:8]
    suffix = "-cpu" if variant == "cpu" else ""
    return f"{registry}/slipway/{model_name}:v{version}-{sha256[:12]}-{recipe}{suffix}"


def connect(timeout_s: float) -> docker.DockerClient:
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=int(min(timeout_s, 600)))
        client.ping()
        return client
    except DockerException as exc:
        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        raise BuildFailed(
            f"Cannot reach the Docker engine at {where} ({_short(exc)}). "
            "Start the Docker daemon, or point DOCKER_HOST at one, then retry the build."
        ) from exc


def registry_digest(client: docker.DockerClient, ref: str, config: BuildConfig) -> str | None:
    """The digest the registry holds for `ref`, or None when it has no such tag."""
    from docker.errors import APIError, NotFound

    try:
        data = client.api.inspect_distribution(ref, auth_config=config.auth_config)
    except NotFound:
        return None
    except APIError as exc:
        text = str(exc).lower()
        if "not found" in text or "manifest unknown" in text or "does not exist" in text:
            return None
        raise BuildFailed(_registry_problem(config, exc)) from exc
    except _engine_gone() as exc:
        raise BuildFailed(_silence_problem(client, config, "a look at the registry", exc)) from exc
    return data.get("Descriptor", {}).get("digest") or None


def contexts_root() -> Path:
    """Where build contexts are laid out: under the var dir, never the system's temporary directory.

    A context holds a full copy of the model and of the CA bundle. One per attempt of a build
    (`context_dir`), so that what a worker killed mid-build leaves behind is found by its name and
    removed once that attempt no longer runs (`services.remove_build_contexts`).
    """
    return Path(settings.VAR_DIR) / "builds"


def context_dir(build_id: int, attempt: int) -> Path:
    """The folder of one attempt of one build; the context is its `context/`."""
    return contexts_root() / f"build-{build_id}-attempt-{attempt}"


_CONTEXT_NAME = re.compile(r"build-(\d+)-attempt-(\d+)")


def contexts_on_disk() -> dict[Path, tuple[int, int]]:
    """Each build folder on this machine, with its (build id, attempt)."""
    try:
        entries = list(contexts_root().iterdir())
    except FileNotFoundError:
        return {}
    found = {}
    for entry in entries:
        if match := _CONTEXT_NAME.fullmatch(entry.name):
            found[entry] = (int(match[1]), int(match[2]))
    return found


def remove_context(path: Path) -> bool:
    """Remove one build folder; False when it was gone already or could not be removed (logged)."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("could not remove the build context %s: %s", path, exc)
        return False
    return True


def assemble_context(
    dest: Path,
    *,
    artifact_open: Callable,
    artifact_sha256: str,
    artifact_format: str,
    config: BuildConfig,
) -> dict[str, str]:
    """Lay out exactly what the Dockerfile needs, and nothing else.

    Returns the build arguments that point the Dockerfile at this layout.
    """
    shutil.copy(DOCKERFILE, dest / "Dockerfile")
    shutil.copytree(
        RUNTIME_PACKAGE,
        dest / "inference_runtime",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "tests"),
    )
    (dest / "wheelhouse").mkdir()
    if config.wheelhouse:
        for wheel in Path(config.wheelhouse).glob("*.whl"):
            target = dest / "wheelhouse" / wheel.name
            if _same_fs(wheel, dest):
                os.link(wheel, target)  # torch wheels are large: a link, not a copy
            else:
                shutil.copy(wheel, target)
    (dest / "certs").mkdir()
    if config.ca_bundle:
        shutil.copy(config.ca_bundle, dest / "certs" / "extra-ca.crt")
    (dest / "model").mkdir()
    model_file = f"model/{_MODEL_FILES[artifact_format]}"
    digest = hashlib.sha256()
    with artifact_open() as src, open(dest / model_file, "wb") as out:
        while chunk := src.read(1024 * 1024):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != artifact_sha256:
        raise BuildFailed(
            f"The stored artifact's SHA-256 is {digest.hexdigest()}, not {artifact_sha256} as uploaded: "
            "storage corrupted it. Upload the version again."
        )
    args = {"MODEL_FILE": model_file, "WHEELHOUSE": "wheelhouse", "EXTRA_CA_DIR": "certs"}
    if config.pip_index_url:
        args["PIP_INDEX_URL"] = config.pip_index_url
    if config.pip_extra_index_url:
        args["PIP_EXTRA_INDEX_URL"] = config.pip_extra_index_url
    if config.pip_offline:
        args["PIP_NO_INDEX"] = "1"
    return args


def _same_fs(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def build_image(
    client: docker.DockerClient,
    context: Path,
    *,
    tag: str,
    buildargs: dict[str, str],
    config: BuildConfig,
    emit: Callable[[str], None],
) -> str:
    """Run the build, streaming its output to `emit`. Returns the image id.

    The context is sent as a tar made beside it in a file without a name (unlinked at once), not one
    the SDK would make, named, in the system's temporary directory: a worker killed while sending it
    leaves nothing there.
    """
    from docker.errors import APIError, DockerException, ImageNotFound
    from docker.utils import tar

    deadline = time.monotonic() + config.timeout_s
    try:
        with tempfile.TemporaryFile(dir=context.parent) as fileobj:
            tar(str(context), fileobj=fileobj)
            stream = client.api.build(
                fileobj=fileobj,
                custom_context=True,
                dockerfile="Dockerfile",
                tag=tag,
                buildargs=buildargs,
                network_mode=config.network_mode or None,
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
                labels={"io.slipway.built-by": "slipway"},
            )
        image_id = None
        step = ""
        for chunk in stream:
            if time.monotonic() > deadline:
                raise BuildFailed(
                    f"The build took longer than {config.timeout_s:.0f}s and was stopped. "
                    "Raise SLIPWAY_BUILD_TIMEOUT_S, or use a wheelhouse or a closer pip index."
                )
            if "error" in chunk:
                message = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                emit(message)
                if " : FROM " in step:
                    raise BuildFailed(_base_image_problem(message))
                raise BuildFailed(_build_problem(message))
            if "stream" in chunk and chunk["stream"].strip():
                emit(chunk["stream"].rstrip("\n"))
                if chunk["stream"].startswith("Step "):
                    step = chunk["stream"]
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            elif image_id is None and (built := _SUCCESSFULLY_BUILT.match(chunk.get("stream", ""))):
                image_id = built.group(1)  # an engine that names the image only in its last line
        if image_id is None:
            # Never the image the tag names now: it may be an older one (a build of the same tag that
            # finished before, or another attempt's), and it would be pushed as this build's.
            raise BuildFailed(
                "The Docker engine ended the build without naming the image it built (the log above shows "
                "how far it got), so nothing was pushed. Retry the build; if this happens again, check the "
                "Docker engine's log."
            )
        image_id = client.images.get(image_id).id  # the full id
        repository, name = tag.rsplit(":", 1)
        client.api.tag(image_id, repository, name, force=True)  # the tag pushed next names this very image
    except ImageNotFound as exc:
        raise BuildFailed(
            f"The image the build made ({image_id}) is gone from the Docker engine (removed meanwhile?); "
            "retry the build."
        ) from exc
    except APIError as exc:
        raise BuildFailed(_build_problem(exc.explanation or _short(exc))) from exc  # the engine's words, no URL
    except DockerException as exc:
        raise BuildFailed(_build_problem(_short(exc))) from exc
    except _engine_gone() as exc:
        raise BuildFailed(_engine_problem("the build", exc)) from exc
    return image_id


_SUCCESSFULLY_BUILT = re.compile(r"Successfully built ([0-9a-f]{12,64})\s*$")


def _engine_gone() -> tuple[type[BaseException], ...]:
    """What the Docker SDK lets through when the engine stops answering mid-call: no DockerException,
    but the HTTP stack's own (a connection reset or refused, a stream cut short, a read timeout)."""
    import http.client

    import requests
    import urllib3

    return (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, ConnectionError)


def _engine_problem(during: str, exc: BaseException) -> str:
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    return (
        f"The Docker engine at {where} stopped answering during {during} ({_short(exc)}): it may have "
        "restarted or been stopped. Check that it is running, then retry the build."
    )


def _timed_out(exc: BaseException) -> bool:
    import requests
    import urllib3

    return isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError))


def _engine_answers(client: docker.DockerClient) -> bool:
    """Whether the Docker engine answers a ping within a few seconds (the client's own timeout is the build's)."""
    try:
        return client.api.get(f"{client.api.base_url}/_ping", timeout=5).ok
    except _engine_gone():
        return False


def _silence_problem(client: docker.DockerClient, config: BuildConfig, during: str, exc: BaseException) -> str:
    """The engine went silent while it talked to the registry: if it still answers a ping, it is waiting on
    the registry, and that is what the operator must look at."""
    if not (_timed_out(exc) and _engine_answers(client)):
        return _engine_problem(during, exc)
    return (
        f"The registry {config.registry} stopped answering during {during}: the Docker engine, which still "
        f"answers, reported no progress for {client.api.timeout}s ({_short(exc)}). Check that the registry is "
        "running and not overloaded or out of disk, and the network or proxy between the Docker host and it "
        "(SLIPWAY_REGISTRY names the address), then retry the build."
    )


_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")


def push_image(
    client: docker.DockerClient,
    ref: str,
    *,
    image_id: str,
    config: BuildConfig,
    emit: Callable[[str], None],
    tries: int = 3,
) -> str:
    """Push `ref`, which names the image `image_id` this attempt built; return the digest the registry reports.

    The engine pushes by tag, and another attempt building the same image on this engine may re-tag it
    between the build and the push. The engine records the digest it pushed against the image it pushed
    (RepoDigests): unless that is this attempt's image, the tag is put back on it and pushed again.
    `emit` gets each line of the push's output, and "" for output that makes no line (byte counts).
    """
    from docker.errors import APIError, DockerException

    repository, tag = ref.rsplit(":", 1)
    for _ in range(tries):
        digest = _push(client, repository, tag, config=config, emit=emit)
        try:
            pushed_ours = f"{repository}@{digest}" in (client.images.get(image_id).attrs.get("RepoDigests") or [])
            if pushed_ours:
                return digest
            emit(f"{ref} was re-tagged to another image on the Docker host during the push; pushing this build's again")
            client.api.tag(image_id, repository, tag, force=True)
        except (APIError, DockerException) as exc:
            raise BuildFailed(
                f"The image this build made ({image_id}) could not be had from the Docker engine after the push "
                f"({_short(exc)}): removed meanwhile? Retry the build."
            ) from exc
        except _engine_gone() as exc:
            raise BuildFailed(_engine_problem("the push", exc)) from exc
    raise BuildFailed(
        f"{ref} kept being re-tagged to other images on the Docker host while this build pushed it (another build "
        "of the same image?), so this build's image could not be pushed under it. Retry the build."
    )


def _push(client: docker.DockerClient, repository: str, tag: str, *, config: BuildConfig, emit) -> str:
    from docker.errors import APIError, DockerException

    digest = None
    try:
        for chunk in client.api.push(repository, tag=tag, stream=True, decode=True, auth_config=config.auth_config):
            if "error" in chunk:
                message = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                emit(message)
                raise BuildFailed(_registry_problem(config, message))
            emit(_progress_line(chunk))  # even a byte count's "" lets the log sink notice a cancel
            found = _DIGEST.search(chunk.get("status", ""))
            if found:
                digest = found.group(1)
            elif chunk.get("aux", {}).get("Digest"):
                digest = chunk["aux"]["Digest"]
    except (APIError, DockerException) as exc:
        raise BuildFailed(_registry_problem(config, _short(exc))) from exc
    except _engine_gone() as exc:
        raise BuildFailed(_silence_problem(client, config, "the push", exc)) from exc
    if digest is None:
        raise BuildFailed(f"The registry {config.registry} did not confirm the push with a digest; retry the build.")
    return digest


def _progress_line(chunk: dict) -> str:
    # Per-layer byte counters would flood the log; keep the state changes.
    status = chunk.get("status", "")
    if not status or chunk.get("progressDetail"):
        return ""
    return f"{chunk['id']}: {status}" if chunk.get("id") else status


def _build_problem(message: str) -> str:
    lower = message.lower()
    if "no space left on device" in lower:
        return (
            f"The Docker host ran out of disk space during the build ({message.strip()[:200]}). Free space where the "
            "Docker engine keeps its data (`docker info` names it, usually /var/lib/docker): remove unused images "
            "and build cache with `docker image prune` and `docker builder prune`, then retry the build."
        )
    return f"A build step failed: {message.strip()[:500]}. The log above shows the step and its output."


def _base_image_problem(message: str) -> str:
    return (
        f"The base image could not be had ({message.strip()[:300]}). Pull or build it on the Docker host, or set "
        "SLIPWAY_BASE_IMAGE_GPU / SLIPWAY_BASE_IMAGE_CPU to an image it has or can pull."
    )


def _registry_problem(config: BuildConfig, exc_or_message) -> str:
    message = str(exc_or_message).strip()
    lower = message.lower()
    if "no basic auth credentials" in lower:  # the engine's words when the registry asks and it has none
        return (
            f"The registry {config.registry} wants a user name and password, and none are set: set "
            "SLIPWAY_REGISTRY_USERNAME and SLIPWAY_REGISTRY_PASSWORD (or SLIPWAY_REGISTRY_PASSWORD_FILE) on the "
            "workers, then retry."
        )
    if "unauthorized" in lower or "authentication required" in lower or "denied" in lower:
        return (
            f"The registry {config.registry} refused the credentials ({message[:200]}). Check "
            "SLIPWAY_REGISTRY_USERNAME and SLIPWAY_REGISTRY_PASSWORD, then retry."
        )
    if "no space left" in lower:
        return f"The registry {config.registry} is out of disk space ({message[:200]}). Free space, then retry."
    return (
        f"Cannot push to the registry {config.registry} ({message[:300]}). Check that it is running and that "
        "SLIPWAY_REGISTRY is right, then retry the build."
    )


def _short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def image_size(client: docker.DockerClient, image: str) -> int | None:
    from docker.errors import APIError, ImageNotFound

    try:
        return int(client.images.get(image).attrs.get("Size") or 0) or None
    except (ImageNotFound, APIError):
        return None
