"""The one small interface every target implements.

A target knows nothing of Django rows: the engine hands it plain values
(a `DeploymentRef`, a `ReleaseSpec`) and reads back plain values
(`TargetStatus`). Every call is idempotent: the engine may repeat any call
after a crash, and a repeated call must neither fail nor duplicate anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class RuntimeSettings:
    """What each replica of a release gets. Validated before it reaches a target."""

    replicas: int = 1
    cpu_request: str = ""  # Kubernetes quantities, e.g. "500m"; "" = unset
    cpu_limit: str = ""
    memory_request: str = ""  # e.g. "1Gi"
    memory_limit: str = ""
    gpus: int = 0  # nvidia.com/gpu per replica
    max_batch_size: int = 16
    max_delay_ms: float = 2.0


@dataclass(frozen=True)
class DeploymentRef:
    """One model in one environment: the unit that owns a stable endpoint."""

    id: int
    key: str  # DNS-1035 label, <= 40 chars, unique per deployment, e.g. "iris-prod"; prefix of every object name
    model_name: str
    environment: str
    # Target settings of the environment (e.g. kubernetes: namespace, context...). Never logged.
    target_config: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class ReleaseSpec:
    """An immutable release: one model version, one image, one set of runtime settings."""

    number: int  # 1, 2, 3... within the deployment
    model_name: str
    model_version: int
    artifact_sha256: str
    signature: dict | None  # Open Inference Protocol signature, passed to the runtime
    settings: RuntimeSettings
    artifact_path: str | None = None  # local target: a file on this machine
    image: str | None = None  # kubernetes target: "registry/repo:tag@sha256:..."


@dataclass
class ReplicaStatus:
    name: str  # pid or pod name
    ready: bool
    metrics_url: str | None = None  # where analysis reads the runtime's /metrics (None: read through metrics())
    restarts: int = 0
    warning: str | None = None


@dataclass
class ReleaseStatus:
    number: int
    desired: int = 0
    updated: int = 0
    ready: int = 0
    available: int = 0
    done: bool = False  # judged as `kubectl rollout status` judges it
    failed: str | None = None  # terminal: e.g. ProgressDeadlineExceeded, a replica that exited for good
    message: str = ""  # why it is not done yet, as kubectl would say it
    warnings: list[str] = field(default_factory=list)  # ImagePullBackOff, CrashLoopBackOff, Unschedulable...
    replicas: list[ReplicaStatus] = field(default_factory=list)


@dataclass
class TargetStatus:
    endpoint: str | None  # the stable endpoint's base URL, once it exists
    weights: dict[int, int]  # release number -> percent of traffic now routed there
    releases: dict[int, ReleaseStatus]  # every release the target still runs


class TargetError(Exception):
    """The target refused or failed; the message says what to do. `retryable` errors are tried again."""

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class Target(Protocol):
    def exact_weights(self, deployment: DeploymentRef) -> bool:
        """True when route() splits traffic by exact percent (a router, a Gateway API HTTPRoute).

        False when traffic splits by replica ratio (a Service over every release's pods):
        the engine then sizes each release to its weight before calling route().
        """

    def apply(self, deployment: DeploymentRef, release: ReleaseSpec, replicas: int) -> None:
        """Make `release` run `replicas` replicas (0 keeps its objects but no pods/processes)."""

    def route(self, deployment: DeploymentRef, weights: dict[int, int]) -> str:
        """Send traffic by percent (the values sum to 100); returns the stable endpoint's URL."""

    def status(self, deployment: DeploymentRef) -> TargetStatus:
        """What runs now, per release; never raises for a release that is simply absent."""

    def metrics(self, deployment: DeploymentRef, release: int) -> list[str]:
        """The Prometheus text of /metrics from every ready replica of `release`."""

    def remove(self, deployment: DeploymentRef, release: int) -> None:
        """Stop and delete everything of `release`; nothing of it is left behind."""

    def teardown(self, deployment: DeploymentRef) -> None:
        """Remove every release and the stable endpoint."""
