"""Environments, deployments, releases and rollouts arrive with the rollout engine.

A Release will point at a ModelVersion with on_delete=PROTECT, which is what
registry.services.delete_version checks for.
"""
