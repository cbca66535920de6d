"""Plans compile to the steps the engine runs; bad plans are refused with what is allowed."""

import pytest

from deployments.plans import InvalidPlan, compile_plan, describe, duration_s


def kinds(steps):
    return [(s["kind"], s.get("weight", s.get("duration_s"))) for s in steps]


def test_default_plan_is_a_rolling_update_in_quarters():
    plan, steps = compile_plan(None, replicas=4)
    assert plan["strategy"] == "rolling"
    assert kinds(steps) == [("weight", 25), ("weight", 50), ("weight", 75), ("weight", 100)]


def test_rolling_with_one_replica_moves_at_once():
    _, steps = compile_plan({"strategy": "rolling"}, replicas=1)
    assert kinds(steps) == [("weight", 100)]


def test_rolling_surge_and_unavailable_make_the_batch():
    _, steps = compile_plan({"strategy": "rolling", "max_surge": 1, "max_unavailable": "33%"}, replicas=3)
    assert kinds(steps) == [("weight", 67), ("weight", 100)]


def test_canary_steps_compile_in_order_and_end_at_full_weight():
    _, steps = compile_plan(
        {
            "strategy": "canary",
            "steps": [
                {"set_weight": 10},
                {"pause": {"duration": "30s"}},
                {"analysis": {"duration": "1m", "max_error_rate": 0.01}},
                {"set_weight": 50},
                {"pause": {}},
            ],
        },
        replicas=2,
    )
    assert kinds(steps) == [
        ("weight", 10),
        ("pause", 30.0),
        ("analysis", 60.0),
        ("weight", 50),
        ("pause", None),
        ("weight", 100),
    ]
    assert steps[2]["thresholds"]["max_error_rate"] == 0.01
    assert describe(steps[4]) == "pause until resumed"


def test_canary_analysis_step_inherits_the_plans_thresholds():
    _, steps = compile_plan(
        {
            "strategy": "canary",
            "analysis": {"duration": 5, "max_latency_p95_ms": 200},
            "steps": [{"set_weight": 20}, {"analysis": {}}],
        },
        replicas=1,
    )
    assert steps[1]["duration_s"] == 5
    assert steps[1]["thresholds"]["max_latency_p95_ms"] == 200


def test_blue_green_previews_then_switches_and_keeps_the_old_release():
    _, steps = compile_plan({"strategy": "blue_green", "keep_old": "2m", "auto_switch": False}, replicas=3)
    assert kinds(steps) == [("preview", None), ("pause", None), ("weight", 100), ("keep_old", 120.0)]


def test_a_first_deploy_sends_everything_at_once_but_keeps_its_checks():
    _, steps = compile_plan(
        {"strategy": "canary", "steps": [{"set_weight": 10}, {"analysis": {"duration": 3}}, {"set_weight": 60}]},
        replicas=1,
        first=True,
    )
    assert kinds(steps) == [("weight", 100), ("analysis", 3.0)]


@pytest.mark.parametrize(
    ("plan", "field", "says"),
    [
        ({"strategy": "yolo"}, "strategy", "rolling, canary, blue_green"),
        ({"strategy": "canary"}, "steps", "a canary needs steps"),
        ({"strategy": "canary", "steps": [{"set_weight": 0}]}, "steps[0]", "1 to 100"),
        ({"strategy": "canary", "steps": [{"set_weight": 50}, {"set_weight": 20}]}, "steps[1]", "weights only grow"),
        ({"strategy": "canary", "steps": [{"jump": 1}]}, "steps[0]", "is not a step"),
        ({"strategy": "canary", "steps": [{"pause": {"duration": "soon"}}]}, "steps[0].duration", "not a duration"),
        ({"strategy": "rolling", "max_surge": "150%"}, "max_surge", "a percent"),
        ({"strategy": "rolling", "max_surge": 0, "max_unavailable": 0}, "max_surge", "cannot both be 0"),
        ({"strategy": "rolling", "steps": []}, "steps", "is not a rolling setting"),
        ({"strategy": "blue_green", "auto_switch": "yes"}, "auto_switch", "true"),
        ({"strategy": "rolling", "progress_deadline": "0s"}, "progress_deadline", "at least 1 second"),
    ],
)
def test_bad_plans_name_the_field_and_what_is_allowed(plan, field, says):
    with pytest.raises(InvalidPlan) as refused:
        compile_plan(plan, replicas=2)
    assert field in refused.value.fields
    assert says in " ".join(refused.value.fields[field])


@pytest.mark.parametrize(
    ("text", "seconds"), [(30, 30.0), ("30s", 30.0), ("2m", 120.0), ("1h", 3600.0), ("500ms", 0.5)]
)
def test_durations(text, seconds):
    assert duration_s(text, "d") == seconds
