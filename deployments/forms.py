"""The browser's form fields turned into the arguments of the deployment services.

Only conversion happens here (text to numbers, JSON text to objects, empty
fields left out so that defaults apply). The services check every value and
say what is wrong with it, for the pages and the API alike.
"""

from __future__ import annotations

import json

from django.http import QueryDict

from controlplane.errors import InvalidInput
from deployments.models import TargetKind

# Text settings of the kubernetes target, as deployments.targets.kubernetes.validate_config reads them.
KUBERNETES_TEXT = ("namespace", "kubeconfig", "context", "image_pull_secret", "ingress_host")
SETTINGS_INTEGERS = ("replicas", "gpus", "max_batch_size")
SETTINGS_NUMBERS = ("max_delay_ms",)
SETTINGS_QUANTITIES = ("cpu_request", "cpu_limit", "memory_request", "memory_limit")

PLAN_EXAMPLES = {
    "rolling": {"max_surge": "25%", "max_unavailable": 0},
    "canary": {
        "steps": [
            {"set_weight": 20},
            {"analysis": {"duration": "1m", "max_error_rate": 0.01, "max_latency_p95_ms": 500}},
            {"set_weight": 50},
            {"pause": {"duration": "5m"}},
        ]
    },
    "blue_green": {"auto_switch": True, "keep_old": "5m"},
}


def json_object(text: str, field: str, example: str) -> dict | None:
    """A JSON object from a textarea; None when it is left empty."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"The {field.replace('_', ' ')} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): "
            f"write an object such as {example}.",
            fields={field: ["not valid JSON"]},
        ) from None
    if not isinstance(value, dict):
        raise InvalidInput(
            f"The {field.replace('_', ' ')} must be a JSON object such as {example}, not {type(value).__name__}.",
            fields={field: ["not an object"]},
        )
    return value


def environment_args(post: QueryDict) -> dict:
    """Keyword arguments of services.create_environment."""
    target = post.get("target", TargetKind.LOCAL)
    config: dict = {}
    if target == TargetKind.KUBERNETES:  # the Kubernetes fields are hidden (and ignored) for the local target
        config = {key: post[key].strip() for key in KUBERNETES_TEXT if post.get(key, "").strip()}
        if post.get("in_cluster"):
            config["in_cluster"] = True
    return {
        "name": post.get("name", "").strip(),
        "description": post.get("description", "").strip(),
        "target": target,
        "target_config": config,
        "promotes_from": post.get("promotes_from") or None,
        "default_plan": json_object(
            post.get("default_plan", ""), "default_plan", json.dumps({"strategy": "rolling", "max_surge": "25%"})
        ),
        **protection_args(post),
    }


def protection_args(post: QueryDict) -> dict:
    """required_approvals, approval_timeout_s (the form asks in hours) and approve_pauses."""
    hours = post.get("approval_timeout_h", "").strip() or "24"
    if not hours.isdigit():
        raise InvalidInput(
            f"Give the expiry in whole hours, not {hours!r}.", fields={"approval_timeout_h": ["a whole number"]}
        )
    required = post.get("required_approvals", "").strip() or "0"
    if not required.isdigit():
        raise InvalidInput(
            f"Approvals needed is a whole number from 0 to 10, not {required!r}.",
            fields={"required_approvals": ["a whole number"]},
        )
    return {
        "required_approvals": int(required),
        "approval_timeout_s": int(hours) * 3600,
        "approve_pauses": bool(post.get("approve_pauses")),
    }


def deploy_args(post: QueryDict) -> dict:
    """Keyword arguments of services.deploy (but model and version, which come from the URL)."""
    environment = post.get("environment", "")
    if not environment:
        raise InvalidInput(
            "Choose the environment to deploy to (create one on the Environments page if there is none).",
            fields={"environment": ["required"]},
        )
    return {
        "environment": environment,
        "plan": plan_from(post.get("strategy", ""), post.get("plan", "")),
        "config": runtime_settings_from(post),
        "reason": post.get("reason", "").strip(),
    }


def plan_from(strategy: str, text: str) -> dict | None:
    """The strategy chosen and the plan's JSON together; None (the environment's default plan) when both are empty."""
    plan = json_object(text, "plan", json.dumps({"strategy": "canary", **PLAN_EXAMPLES["canary"]}))
    if plan is None:
        return {"strategy": strategy} if strategy else None
    if strategy and plan.setdefault("strategy", strategy) != strategy:
        raise InvalidInput(
            f"The strategy chosen ({strategy}) and the plan's JSON ({plan['strategy']}) disagree: "
            "choose one, or remove the strategy from the JSON.",
            fields={"plan.strategy": ["disagrees with the strategy chosen"]},
        )
    return plan


def runtime_settings_from(post: QueryDict) -> dict | None:
    """The runtime settings filled in; the others keep the current release's (or the environment's) values."""
    config: dict = {}
    errors: dict[str, list[str]] = {}
    for name in (*SETTINGS_INTEGERS, *SETTINGS_NUMBERS, *SETTINGS_QUANTITIES):
        text = post.get(name, "").strip()
        if not text:
            continue
        if name in SETTINGS_QUANTITIES:
            config[name] = text
            continue
        try:
            config[name] = int(text) if name in SETTINGS_INTEGERS else float(text)
        except ValueError:
            kind = "a whole number" if name in SETTINGS_INTEGERS else "a number"
            errors[name] = [f"{text!r} is not {kind}"]
    if errors:
        described = "; ".join(f"{name.replace('_', ' ')}: {' '.join(msgs)}" for name, msgs in errors.items())
        raise InvalidInput(f"The runtime settings are not valid: {described}.", fields=errors)
    return config or None
