"""Rollout analysis on real /metrics text, made by the runtime's own Metrics class."""

import json
import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from deployments.analysis import (
    ERROR_OUTCOMES,
    InvalidThresholds,
    Sample,
    Thresholds,
    judge,
    parse,
    quantile,
    window,
)
from inference_runtime.errors import OUTCOMES
from inference_runtime.metrics import Metrics


def _replica(outcomes: dict[str, int] | None = None, latencies: dict[float, int] | None = None) -> Metrics:
    metrics = Metrics("iris", "1")
    _serve(metrics, outcomes, latencies)
    return metrics


def _serve(metrics: Metrics, outcomes: dict[str, int] | None = None, latencies: dict[float, int] | None = None):
    """Count requests by outcome and observe `{seconds: how many}` latencies, as the runtime does."""
    for outcome, n in (outcomes or {}).items():
        metrics.requests[outcome].inc(n)
    for seconds, n in (latencies or {}).items():
        for _ in range(n):
            metrics.latency.observe(seconds)


def _scrape(*replicas: Metrics) -> Sample:
    return parse([replica.exposition().decode() for replica in replicas])


def _bucket(sample: Sample, le: float) -> float:
    return dict(sample.buckets)[le]


# --- what counts as an error ------------------------------------------------------------
def test_every_runtime_outcome_is_either_an_error_or_not():
    """A new outcome in the runtime fails here until someone decides whether it is the release's fault."""
    outcomes = {"success", *OUTCOMES.values()}
    assert outcomes >= ERROR_OUTCOMES
    assert outcomes - ERROR_OUTCOMES == {
        "success",
        "bad_request",
        "not_found",
        "too_large",
        "unsupported",
        "client_timeout",
    }


def test_server_failures_count_as_errors_and_client_mistakes_do_not():
    sample = _scrape(
        _replica({"success": 10, "error": 1, "timeout": 2, "busy": 3, "not_ready": 4}),
        _replica({"bad_request": 5, "not_found": 6, "too_large": 7, "unsupported": 8}),
    )
    assert (sample.total, sample.errors) == (46, 10)


# --- parse --------------------------------------------------------------------------------
def test_parse_sums_the_counts_and_buckets_of_every_replica():
    a = _replica({"success": 30, "error": 2}, {0.003: 10})
    b = _replica({"success": 10, "timeout": 1, "bad_request": 3}, {0.2: 4})
    sample = _scrape(a, b)
    assert sample.requests["success"] == 40
    assert (sample.total, sample.errors) == (46, 3)
    assert sample.latency_count == 14
    assert sample.latency_sum == pytest.approx(10 * 0.003 + 4 * 0.2)
    assert (_bucket(sample, 0.0025), _bucket(sample, 0.005), _bucket(sample, 0.1)) == (0, 10, 10)
    assert (_bucket(sample, 0.25), _bucket(sample, math.inf)) == (14, 14)
    assert [le for le, _ in sample.buckets][-3:] == [10.0, 30.0, math.inf]
    assert not sample.reset


def test_no_replicas_is_an_empty_sample():
    assert parse([]) == Sample()


def test_text_that_is_not_prometheus_is_refused_naming_the_replica():
    good = _replica().exposition().decode()
    with pytest.raises(ValueError, match="replica 2 of 2: its /metrics is not Prometheus text"):
        parse([good, "<html><body>502 Bad Gateway</body></html>"])


def test_metrics_of_something_else_are_refused():
    registry = CollectorRegistry()
    Histogram("http_request_duration_seconds", "Some other server.", registry=registry).observe(0.1)
    with pytest.raises(ValueError, match=r"replica 1 of 1: .* no slipway_inference_requests_total; is it the Slipway"):
        parse([generate_latest(registry).decode()])


def test_replicas_with_different_latency_buckets_are_refused():
    registry = CollectorRegistry()  # a runtime that chose other buckets
    Counter("slipway_inference_requests", "Requests.", ["outcome"], registry=registry).labels("success").inc()
    Histogram("slipway_inference_request_duration_seconds", "Latency.", buckets=(0.1, 1.0), registry=registry).observe(
        0.5
    )
    with pytest.raises(ValueError, match=r"the replicas have different latency buckets .* different runtime versions"):
        parse([_replica({"success": 1}).exposition().decode(), generate_latest(registry).decode()])


# --- window ---------------------------------------------------------------------------------
def test_a_window_holds_only_what_happened_between_two_snapshots():
    a, b = _replica({"success": 50, "error": 5}, {0.003: 55}), _replica({"success": 20}, {0.003: 20})
    before = _scrape(a, b)
    _serve(a, {"success": 8, "error": 2}, {0.03: 10})
    _serve(b, {"success": 10, "bad_request": 1}, {0.03: 10})
    w = window(before, _scrape(a, b))
    assert (w.total, w.errors, w.requests["bad_request"]) == (21, 2, 1)
    assert (w.latency_count, _bucket(w, 0.025), _bucket(w, 0.05), _bucket(w, math.inf)) == (20, 0, 20, 20)
    assert w.latency_sum == pytest.approx(20 * 0.03)
    assert not w.reset
    # Every observation in (25 ms, 50 ms]: the median interpolates to the middle of that bucket.
    assert quantile(0.5, w.buckets) == pytest.approx(0.0375)
    assert quantile(0.95, w.buckets) == pytest.approx(0.025 + 0.025 * 19 / 20)


def test_a_replica_that_restarted_gives_a_reset_window_and_never_a_negative_count():
    a, b = _replica({"success": 100, "error": 3}, {0.2: 103}), _replica({"success": 50}, {0.2: 50})
    before = _scrape(a, b)
    _serve(a, {"success": 10}, {0.2: 10})
    b = _replica({"success": 5, "timeout": 1}, {0.002: 6})  # restarted: its counters start again at 0
    after = _scrape(a, b)
    w = window(before, after)
    assert w.reset
    assert w.requests == after.requests
    assert w.buckets == after.buckets
    assert all(n >= 0 for n in w.requests.values()) and all(n >= 0 for _, n in w.buckets)
    check = judge(Thresholds(), 2, 2, w).checks[1]
    assert check.name == "requests"
    assert "a replica restarted or left during the window" in check.detail


def test_a_replica_that_left_between_snapshots_also_counts_as_a_reset():
    a, b = _replica({"success": 10}, {0.01: 10}), _replica({"success": 10}, {0.01: 10})
    before = _scrape(a, b)
    _serve(a, {"success": 1}, {0.01: 1})
    w = window(before, _scrape(a))
    assert w.reset
    assert w.total == 11


def test_a_window_from_no_replicas_is_the_later_snapshot():
    after = _scrape(_replica({"success": 3}, {0.01: 3}))
    assert window(parse([]), after) == after


def test_a_sample_round_trips_through_json():
    w = window(_scrape(_replica()), _scrape(_replica({"success": 4, "busy": 1}, {0.004: 5})))
    data = json.loads(json.dumps(w.to_dict(), allow_nan=False))
    assert data["buckets"][-1] == ["+Inf", 5.0]
    assert Sample.from_dict(data) == w


# --- quantile -------------------------------------------------------------------------------
def test_quantile_interpolates_inside_the_bucket_the_rank_falls_in():
    buckets = [(0.1, 0), (0.2, 10), (0.4, 30), (math.inf, 40)]
    assert quantile(0.5, buckets) == pytest.approx(0.3)  # rank 20: half-way through (0.2, 0.4]
    assert quantile(0.1, buckets) == pytest.approx(0.14)  # rank 4 of the 10 in (0.1, 0.2]
    assert quantile(0.75, buckets) == pytest.approx(0.4)  # rank 30: the top of (0.2, 0.4]


def test_quantile_in_the_inf_bucket_is_the_largest_finite_bound():
    assert quantile(0.9, [(0.1, 0), (0.2, 10), (0.4, 30), (math.inf, 40)]) == 0.4


def test_quantile_in_the_lowest_bucket_starts_from_zero():
    assert quantile(0.5, [(1.0, 10), (math.inf, 10)]) == pytest.approx(0.5)
    assert quantile(0.5, [(-1.0, 10), (math.inf, 10)]) == -1.0  # a bound at or below 0 is returned as is
    assert quantile(0.0, [(0.1, 0), (0.2, 4), (math.inf, 4)]) == pytest.approx(0.1)


def test_quantile_takes_the_envelope_of_non_monotonic_buckets_as_promql_does():
    # (0.2, 4) is read as (0.2, 6): rank 7 is then 1 of the 4 in (0.2, 0.4], not 3 of 6.
    assert quantile(0.7, [(0.1, 6), (0.2, 4), (0.4, 10), (math.inf, 10)]) == pytest.approx(0.25)


def test_quantile_without_observations_is_none():
    assert quantile(0.5, []) is None
    assert quantile(0.5, [(0.1, 0), (math.inf, 0)]) is None
    assert quantile(0.5, [(math.inf, 7)]) is None


def test_quantile_refuses_a_histogram_without_inf_or_a_q_outside_0_to_1():
    with pytest.raises(ValueError, match=r"\+Inf bucket"):
        quantile(0.5, [(0.1, 1), (0.2, 2)])
    with pytest.raises(ValueError, match=r"from 0 to 1, not 1\.5"):
        quantile(1.5, [(0.1, 1), (math.inf, 1)])


# --- thresholds -------------------------------------------------------------------------------
def test_thresholds_from_a_plan():
    plan = {"max_error_rate": 0.01, "max_latency_p95_ms": 500, "min_requests": 100, "on_no_traffic": "fail"}
    thresholds = Thresholds.from_dict(plan)
    assert thresholds == Thresholds(0.01, None, 500, None, 100, "fail")
    assert Thresholds.from_dict(json.loads(json.dumps(thresholds.to_dict()))) == thresholds
    assert Thresholds.from_dict(None) == Thresholds() == Thresholds(min_requests=1, on_no_traffic="pass")


@pytest.mark.parametrize(
    ("field", "bad", "message"),
    [
        ("max_error_rate", 1.5, "must be a fraction from 0 to 1 (0.01 is 1%), not 1.5"),
        ("max_error_rate", -0.1, "must be a fraction from 0 to 1 (0.01 is 1%), not -0.1"),
        ("max_error_rate", "1%", "must be a fraction from 0 to 1 (0.01 is 1%), not '1%'"),
        ("max_latency_p50_ms", 0, "must be a number of milliseconds above 0, not 0"),
        ("max_latency_p95_ms", -5, "must be a number of milliseconds above 0, not -5"),
        ("max_latency_p99_ms", math.inf, "must be a number of milliseconds above 0, not inf"),
        ("max_latency_p99_ms", True, "must be a number of milliseconds above 0, not True"),
        ("min_requests", -1, "must be a whole number of requests, 0 or more, not -1"),
        ("min_requests", 2.5, "must be a whole number of requests, 0 or more, not 2.5"),
        ("on_no_traffic", "skip", 'must be "pass" or "fail", not \'skip\''),
        ("max_eror_rate", 0.01, "is not a threshold; the known ones are max_error_rate, max_latency_p50_ms"),
    ],
)
def test_a_bad_threshold_says_what_is_allowed(field, bad, message):
    with pytest.raises(InvalidThresholds) as caught:
        Thresholds.from_dict({field: bad})
    assert isinstance(caught.value, ValueError)
    assert list(caught.value.fields) == [field]
    assert caught.value.fields[field][0].startswith(message)


def test_every_bad_threshold_is_reported_at_once():
    with pytest.raises(InvalidThresholds) as caught:
        Thresholds.from_dict({"max_error_rate": 2, "min_requests": "ten", "max_latency_p95_ms": None})
    assert sorted(caught.value.fields) == ["max_error_rate", "min_requests"]


# --- judge --------------------------------------------------------------------------------------
STRICT = Thresholds(
    max_error_rate=0.01, max_latency_p50_ms=200, max_latency_p95_ms=500, max_latency_p99_ms=1000, min_requests=100
)


def _bad_canary() -> Sample:
    """200 requests, 25 failed; 175 took 0.2 s and 25 took 0.7 s.

    p50: rank 100 of the 175 in (0.1, 0.25] -> 100 + 150 * 100/175 = 185.7 ms
    p95: rank 190, 15 into the 25 in (0.5, 1.0] -> 500 + 500 * 15/25 = 800 ms
    p99: rank 198 -> 500 + 500 * 23/25 = 960 ms
    """
    replica = _replica()
    before = _scrape(replica)
    _serve(replica, {"success": 175, "error": 25}, {0.2: 175, 0.7: 25})
    return window(before, _scrape(replica))


def test_a_failing_release_names_each_failed_check_with_measured_against_threshold():
    analysis = judge(STRICT, 3, 3, _bad_canary())
    assert not analysis.passed
    assert analysis.summary() == "error rate 12.5% > 1.0% (25 of 200 requests failed); p95 latency 800 ms > 500 ms"
    checks = {check.name: check for check in analysis.checks}
    assert list(checks) == ["readiness", "requests", "error_rate", "latency_p50", "latency_p95", "latency_p99"]
    assert (checks["error_rate"].passed, checks["error_rate"].measured, checks["error_rate"].threshold) == (
        False,
        0.125,
        0.01,
    )
    assert checks["latency_p50"].passed and checks["latency_p50"].measured == pytest.approx(100 + 150 * 100 / 175)
    assert checks["latency_p50"].detail == "p50 latency 186 ms ≤ 200 ms"
    assert not checks["latency_p95"].passed and checks["latency_p95"].measured == pytest.approx(800)
    assert checks["latency_p99"].passed and checks["latency_p99"].measured == pytest.approx(960)
    assert checks["readiness"].detail == "3 of 3 replicas ready"
    assert checks["requests"].detail == "200 requests in the window"


def test_the_analysis_is_json():
    data = json.loads(json.dumps(judge(STRICT, 2, 3, _bad_canary()).to_dict(), allow_nan=False))
    assert data["passed"] is False
    assert data["summary"].startswith("2 of 3 replicas ready; error rate 12.5% > 1.0%")
    assert data["checks"][0] == {
        "name": "readiness",
        "passed": False,
        "measured": 2,
        "threshold": 3,
        "unit": "replicas",
        "detail": "2 of 3 replicas ready",
    }


def test_a_replica_not_ready_fails_the_analysis_even_with_perfect_traffic():
    sample = window(Sample(), _scrape(_replica({"success": 500}, {0.002: 500})))
    analysis = judge(STRICT, 2, 3, sample)
    assert not analysis.passed
    assert analysis.summary() == "2 of 3 replicas ready"
    assert judge(STRICT, 0, 0, sample).summary() == "no replicas desired: nothing serves it"


def test_a_healthy_release_passes_and_says_what_it_measured():
    sample = window(Sample(), _scrape(_replica({"success": 199, "busy": 1}, {0.002: 200})))
    analysis = judge(STRICT, 3, 3, sample)
    assert analysis.passed
    assert analysis.summary() == (
        "passed: 3 of 3 replicas ready; 200 requests in the window; error rate 0.5% ≤ 1.0% (1 of 200 requests failed); "
        "p50 latency 2 ms ≤ 200 ms; p95 latency 2 ms ≤ 500 ms; p99 latency 2 ms ≤ 1000 ms"
    )


def test_an_error_rate_just_over_its_threshold_shows_the_digits_that_tell_them_apart():
    sample = window(Sample(), _scrape(_replica({"success": 9896, "timeout": 104})))
    check = judge(Thresholds(max_error_rate=0.01), 1, 1, sample).checks[2]
    assert check.detail == "error rate 1.04% > 1.00% (104 of 10000 requests failed)"


def test_client_mistakes_do_not_fail_a_release_with_no_errors_allowed():
    sample = window(Sample(), _scrape(_replica({"success": 100, "bad_request": 60, "not_found": 40})))
    analysis = judge(Thresholds(max_error_rate=0), 1, 1, sample)
    assert analysis.passed
    assert analysis.checks[2].detail == "error rate 0.0% ≤ 0.0% (0 of 200 requests failed)"


def test_latency_beyond_the_largest_bucket_fails_as_at_least_that_bound():
    sample = window(Sample(), _scrape(_replica({"success": 100}, {0.01: 98, 45.0: 2})))
    analysis = judge(Thresholds(max_latency_p99_ms=500), 1, 1, sample)
    assert analysis.summary() == "p99 latency over 30000 ms (the largest bucket) > 500 ms"
    lenient = judge(Thresholds(max_latency_p99_ms=60_000), 1, 1, sample)
    assert not lenient.passed
    assert lenient.summary() == "p99 latency over 30000 ms (the largest bucket), so not known to be ≤ 60000 ms"


def test_no_traffic_passes_by_default_without_judging_errors_or_latency():
    analysis = judge(STRICT, 3, 3, window(_scrape(_replica()), _scrape(_replica())))
    assert analysis.passed
    assert [check.name for check in analysis.checks] == ["readiness", "requests"]
    assert analysis.checks[1].detail == (
        "no requests in the window: error rate and latency not judged (on_no_traffic is 'pass')"
    )


def test_too_little_traffic_fails_when_the_plan_says_so():
    sample = window(Sample(), _scrape(_replica({"error": 3}, {0.9: 3})))
    thresholds = Thresholds(max_error_rate=0.01, min_requests=10, on_no_traffic="fail")
    analysis = judge(thresholds, 1, 1, sample)
    assert not analysis.passed
    assert analysis.summary() == (
        "only 3 requests in the window, fewer than the 10 required: error rate and latency not judged; "
        "on_no_traffic is 'fail': is traffic reaching it?"
    )


def test_min_requests_zero_allows_a_window_without_traffic():
    analysis = judge(Thresholds(min_requests=0, on_no_traffic="fail", max_error_rate=0.01), 1, 1, Sample())
    assert analysis.passed
    assert analysis.checks[1].detail == "no requests in the window: error rate and latency not judged"
