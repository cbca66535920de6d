"""Where releases run: one module per target behind the interface in base.py."""

from __future__ import annotations

from deployments.targets.base import (
    DeploymentRef,
    ReleaseSpec,
    ReleaseStatus,
    ReplicaStatus,
    RuntimeSettings,
    Target,
    TargetError,
    TargetStatus,
)

__all__ = [
    "DeploymentRef",
    "ReleaseSpec",
    "ReleaseStatus",
    "ReplicaStatus",
    "RuntimeSettings",
    "Target",
    "TargetError",
    "TargetStatus",
    "get_target",
]


def get_target(kind: str) -> Target:
    if kind == "local":
        from deployments.targets.local import LocalTarget

        return LocalTarget()
    if kind == "kubernetes":
        from deployments.targets.kubernetes import KubernetesTarget

        return KubernetesTarget()
    raise ValueError(f"unknown target {kind!r}")
