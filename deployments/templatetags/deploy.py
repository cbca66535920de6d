"""The deploy form on a version's page.

A tag rather than context from the registry's views: the registry does not
know about environments, and the form appears both on the page and in the
htmx refresh that follows a version's validation.
"""

from __future__ import annotations

import json

from django import template
from django.conf import settings

from controlplane import access
from controlplane.audit import Actor
from controlplane.models import Role
from deployments.forms import PLAN_EXAMPLES, SETTINGS_INTEGERS, SETTINGS_NUMBERS, SETTINGS_QUANTITIES
from deployments.models import Environment
from deployments.plans import STRATEGIES

register = template.Library()

STRATEGY_LABELS = {"rolling": "Rolling", "canary": "Canary", "blue_green": "Blue-green"}
SETTING_HINTS = {
    "gpus": "0",
    "max_batch_size": "16",
    "max_delay_ms": "2",
    "cpu_request": "500m",
    "cpu_limit": "2",
    "memory_request": "512Mi",
    "memory_limit": "2Gi",
}


@register.inclusion_tag("deployments/htmx/deploy_form.html", takes_context=True)
def deploy_form(context, version, oob: bool = False) -> dict:
    form = context.get("deploy_form") or {}
    ready = version.status == "ready"
    environments = _deployable(context) if ready else []
    return {
        "version": version,
        "oob": oob,
        "ready": ready,
        "csrf_token": context.get("csrf_token"),
        "error": context.get("error") if form else "",
        "error_fields": _marked(context.get("error_fields", ())) if form else (),
        "form": form,
        "environments": environments,
        # None to deploy to: is it that none exists, or that this user may deploy to none?
        "environments_exist": ready and not environments and Environment.objects.exists(),
        "strategies": [(name, STRATEGY_LABELS[name], json.dumps(PLAN_EXAMPLES[name], indent=2)) for name in STRATEGIES],
        "settings": [
            (name, name.replace("_", " ").capitalize(), SETTING_HINTS[name], form.get(name, ""))
            for name in (*SETTINGS_INTEGERS, *SETTINGS_NUMBERS, *SETTINGS_QUANTITIES)
            if name != "replicas"
        ],
    }


def _marked(fields) -> set[str]:
    """The form's fields to mark as invalid: a refusal about a key of the plan (`plan.steps`) marks the plan."""
    return {*fields, *("plan" for name in fields if name.startswith("plan."))}


def _deployable(context) -> list[str]:
    """The environments the viewer may deploy to."""
    request = context.get("request")
    if request is None:
        return []
    visible = access.scope(Environment.objects, Actor.from_request(request), field="pk", role=Role.DEPLOYER)
    return list(visible.order_by("created_at", "name").values_list("name", flat=True))


@register.simple_tag
def default_build_variant() -> str:
    """What the API builds when a request names no variant: the build form selects it."""
    return settings.SLIPWAY_BUILD_VARIANT
