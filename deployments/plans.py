"""Rollout plans: what a person writes, checked and compiled to the steps the engine runs.

    {"strategy": "rolling", "max_surge": "25%"}
    {"strategy": "canary", "steps": [{"set_weight": 10}, {"pause": {"duration": "30s"}},
                                     {"analysis": {"duration": "1m", "max_error_rate": 0.01}},
                                     {"set_weight": 50}, {"pause": {}}]}
    {"strategy": "blue_green", "analysis": {"duration": "30s"}, "keep_old": "5m"}

Compiled steps are small dicts: {"kind": "weight", "weight": 50}, {"kind": "pause",
"duration_s": 30 or None}, {"kind": "analysis", "duration_s": 60, "thresholds": {...}},
{"kind": "preview"} (blue-green: the new release fully up, no traffic) and
{"kind": "keep_old", "duration_s": 300}. Every plan ends at weight 100.
"""

from __future__ import annotations

import math
import re
from typing import Any

STRATEGIES = ("rolling", "canary", "blue_green")
DEFAULT_PLAN: dict[str, Any] = {"strategy": "rolling", "max_surge": "25%", "max_unavailable": 0}
# A rollback replaces the release at once, and leaves nothing of it behind (no keep_previous).
ROLLBACK_PLAN: dict[str, Any] = {"strategy": "rolling", "max_surge": "100%", "max_unavailable": 0, "keep_previous": 0}
DEFAULT_PROGRESS_DEADLINE_S = 300.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
DEFAULT_KEEP_PREVIOUS_S = 600.0
_COMMON = {"strategy", "progress_deadline", "analysis", "keep_previous"}
_KEYS = {
    "rolling": _COMMON | {"max_surge", "max_unavailable"},
    "canary": _COMMON | {"steps"},
    "blue_green": _COMMON | {"auto_switch", "keep_old"},
}


class InvalidPlan(ValueError):
    """A plan that cannot run; `fields` maps each bad field to what is allowed."""

    def __init__(self, fields: dict[str, list[str]]):
        super().__init__("; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in fields.items()))
        self.fields = fields


def duration_s(value: Any, field: str) -> float:
    """Seconds from 30, 30.5, "30s", "2m", "1h" or "500ms"."""
    if isinstance(value, bool):
        raise InvalidPlan({field: ['must be a duration such as 30, "30s", "5m" or "1h".']})
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise InvalidPlan({field: [f'{value!r} is not a duration: use a number of seconds, or "30s", "5m", "1h".']})
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0 <= seconds <= 7 * 86400:
        raise InvalidPlan({field: ["must be between 0 and 7 days."]})
    return seconds


def _replicas_or_percent(value: Any, replicas: int, field: str) -> int:
    """A count, or "N%" of `replicas` rounded up (as Kubernetes rounds max surge)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = re.fullmatch(r"(\d{1,3})%", str(value).strip())
    if match and int(match.group(1)) <= 100:
        return math.ceil(replicas * int(match.group(1)) / 100)
    raise InvalidPlan({field: [f'{value!r}: use a number of replicas (2) or a percent ("25%").']})


def _thresholds(value: Any, field: str) -> tuple[float, dict]:
    """(duration_s, thresholds) of an analysis; the thresholds are checked by deployments.analysis."""
    from deployments.analysis import Thresholds

    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise InvalidPlan({field: ['must be an object such as {"duration": "1m", "max_error_rate": 0.01}.']})
    value = dict(value)
    seconds = duration_s(value.pop("duration", 0), f"{field}.duration")
    try:
        thresholds = Thresholds.from_dict(value)
    except ValueError as exc:
        raise InvalidPlan({field: [str(exc)]}) from None
    return seconds, thresholds.to_dict()


def compile_plan(plan: dict | None, *, replicas: int, first: bool = False) -> tuple[dict, list[dict]]:
    """(the plan normalised, its steps). `first`: nothing serves yet, so traffic goes straight to 100%."""
    if plan is not None and not isinstance(plan, dict):
        raise InvalidPlan({"plan": ['must be a JSON object, e.g. {"strategy": "canary", "steps": [...]}.']})
    plan = dict(plan or DEFAULT_PLAN)
    strategy = plan.get("strategy", "rolling")
    if strategy not in STRATEGIES:
        raise InvalidPlan({"strategy": [f"{strategy!r}: use one of {', '.join(STRATEGIES)}."]})
    plan["strategy"] = strategy
    unknown = sorted(set(plan) - _KEYS[strategy])
    if unknown:
        allowed = ", ".join(sorted(_KEYS[strategy]))
        raise InvalidPlan({key: [f"is not a {strategy} setting (allowed: {allowed})."] for key in unknown})
    plan["progress_deadline"] = duration_s(
        plan.get("progress_deadline", DEFAULT_PROGRESS_DEADLINE_S), "progress_deadline"
    )
    if plan["progress_deadline"] < 1:
        raise InvalidPlan({"progress_deadline": ["must be at least 1 second."]})
    plan["keep_previous"] = duration_s(plan.get("keep_previous", DEFAULT_KEEP_PREVIOUS_S), "keep_previous")
    analysis = None
    if plan.get("analysis") is not None:
        seconds, thresholds = _thresholds(plan["analysis"], "analysis")
        analysis = {"kind": "analysis", "duration_s": seconds, "thresholds": thresholds}
        plan["analysis"] = {"duration": seconds, **thresholds}
    steps = _COMPILERS[strategy](plan, replicas, analysis)
    if first:
        steps = _first_deploy(steps)
    if {"kind": "weight", "weight": 100} not in steps:
        steps.append({"kind": "weight", "weight": 100})
    return plan, steps


def _rolling(plan: dict, replicas: int, analysis: dict | None) -> list[dict]:
    surge = _replicas_or_percent(plan.get("max_surge", "25%"), replicas, "max_surge")
    unavailable = _replicas_or_percent(plan.get("max_unavailable", 0), replicas, "max_unavailable")
    if surge == 0 and unavailable == 0:
        raise InvalidPlan({"max_surge": ["max_surge and max_unavailable cannot both be 0: nothing could move."]})
    plan["max_surge"], plan["max_unavailable"] = plan.get("max_surge", "25%"), plan.get("max_unavailable", 0)
    batch = surge + unavailable
    steps = [
        {"kind": "weight", "weight": min(100, math.ceil(100 * done / replicas))}
        for done in range(batch, replicas + batch, batch)
    ]
    steps[-1] = {"kind": "weight", "weight": 100}
    return [*steps, *([analysis] if analysis else [])]


def _canary(plan: dict, replicas: int, analysis: dict | None) -> list[dict]:
    raw = plan.get("steps")
    if not isinstance(raw, list) or not raw:
        raise InvalidPlan(
            {"steps": ['a canary needs steps, e.g. [{"set_weight": 10}, {"pause": {"duration": "1m"}}].']}
        )
    steps, weight, normalised = [], 0, []
    for index, step in enumerate(raw):
        where = f"steps[{index}]"
        if not isinstance(step, dict) or len(step) != 1:
            raise InvalidPlan({where: ['must be one of {"set_weight": N}, {"pause": {...}}, {"analysis": {...}}.']})
        ((kind, value),) = step.items()
        if kind == "set_weight":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
                raise InvalidPlan({where: ["set_weight must be a whole percent from 1 to 100."]})
            if value < weight:
                raise InvalidPlan({where: [f"set_weight {value} is below the previous {weight}: weights only grow."]})
            weight = value
            steps.append({"kind": "weight", "weight": value})
            normalised.append({"set_weight": value})
        elif kind == "pause":
            value = value or {}
            if not isinstance(value, dict) or set(value) - {"duration"}:
                raise InvalidPlan({where: ['pause takes {} (until resumed) or {"duration": "30s"}.']})
            seconds = duration_s(value["duration"], f"{where}.duration") if "duration" in value else None
            steps.append({"kind": "pause", "duration_s": seconds})
            normalised.append({"pause": {} if seconds is None else {"duration": seconds}})
        elif kind == "analysis":
            if value in (None, {}) and analysis is not None:
                step_analysis = dict(analysis)
            else:
                seconds, thresholds = _thresholds({**(plan.get("analysis") or {}), **(value or {})}, where)
                step_analysis = {"kind": "analysis", "duration_s": seconds, "thresholds": thresholds}
            steps.append(step_analysis)
            normalised.append({"analysis": {"duration": step_analysis["duration_s"], **step_analysis["thresholds"]}})
        else:
            raise InvalidPlan({where: [f"{kind!r} is not a step: use set_weight, pause or analysis."]})
    plan["steps"] = normalised
    if weight < 100:
        steps.append({"kind": "weight", "weight": 100})
    return steps


def _blue_green(plan: dict, replicas: int, analysis: dict | None) -> list[dict]:
    auto_switch = plan.get("auto_switch", True)
    if not isinstance(auto_switch, bool):
        raise InvalidPlan({"auto_switch": ["must be true (switch once verified) or false (wait for a person)."]})
    keep_old = duration_s(plan.get("keep_old", 60), "keep_old")
    plan["auto_switch"], plan["keep_old"] = auto_switch, keep_old
    steps: list[dict] = [{"kind": "preview"}]
    if analysis:
        steps.append(analysis)
    if not auto_switch:
        steps.append({"kind": "pause", "duration_s": None})
    steps.append({"kind": "weight", "weight": 100})
    if keep_old:
        steps.append({"kind": "keep_old", "duration_s": keep_old})
    return steps


def _first_deploy(steps: list[dict]) -> list[dict]:
    """Nothing serves yet: the first traffic step takes everything; what the plan checks afterwards stays."""
    out, sent = [], False
    for step in steps:
        if step["kind"] in ("weight", "preview"):
            if not sent:
                out.append({"kind": "weight", "weight": 100})
                sent = True
        elif step["kind"] != "keep_old":
            out.append(step)
    return out


_COMPILERS = {"rolling": _rolling, "canary": _canary, "blue_green": _blue_green}


def describe(step: dict | None) -> str:
    """A step as a person reads it."""
    if step is None:
        return "finishing"
    kind = step["kind"]
    if kind == "weight":
        return f"send {step['weight']}% of traffic to the new release"
    if kind == "pause":
        return "pause until resumed" if step["duration_s"] is None else f"pause {step['duration_s']:g} s"
    if kind == "analysis":
        return f"analyse for {step['duration_s']:g} s"
    if kind == "preview":
        return "bring the new release up without traffic"
    if kind == "keep_old":
        return f"keep the old release {step['duration_s']:g} s"
    return kind
