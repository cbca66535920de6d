"""Rollout analysis: is a release healthy enough to keep its traffic?

Pure functions over plain values, so a Celery task can call them between two
steps and store every value as JSON. The engine scrapes the release's replicas
(`parse`), waits, scrapes again, takes the `window` between the two snapshots
and `judge`s it against the plan's `Thresholds`. No Django here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace

from prometheus_client.parser import text_string_to_metric_families

REQUESTS = "slipway_inference_requests_total"
LATENCY = "slipway_inference_request_duration_seconds"

# Outcomes (inference_runtime/errors.py) that are the release's failures: requests
# it should have answered and did not. "error" is a failed forward pass or an
# unexpected error (500; a client that hangs up mid-request is counted apart, in
# slipway_inference_client_disconnects_total), "timeout" a 504, "busy" a full queue (503), "not_ready" a replica that
# took traffic while loading or draining (503). Client mistakes are no fault of the
# release and do not count: bad_request (400), not_found (404), too_large (413),
# unsupported (415: a Content-Encoding the client chose; 501: BYTES data or Triton's
# classification extension) and client_timeout (408: the client did not send its body in time).
ERROR_OUTCOMES = frozenset({"error", "timeout", "busy", "not_ready"})
QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


@dataclass(frozen=True)
class Sample:
    """Counters of one release, summed over its replicas: one scrape, or the window between two."""

    requests: dict[str, float] = field(default_factory=dict)  # outcome -> requests answered
    buckets: tuple[tuple[float, float], ...] = ()  # (upper bound in s, cumulative count), ascending, last +Inf
    latency_sum: float = 0.0  # seconds
    latency_count: float = 0.0
    reset: bool = False  # a window across a counter reset: counts go back to each replica's start

    @property
    def total(self) -> int:
        return round(sum(self.requests.values()))

    @property
    def errors(self) -> int:
        return round(sum(n for outcome, n in self.requests.items() if outcome in ERROR_OUTCOMES))

    def to_dict(self) -> dict:
        return {
            "requests": dict(self.requests),
            "buckets": [["+Inf" if math.isinf(le) else repr(le), n] for le, n in self.buckets],
            "latency_sum": self.latency_sum,
            "latency_count": self.latency_count,
            "reset": self.reset,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Sample:
        return cls(
            requests={str(k): float(v) for k, v in data["requests"].items()},
            buckets=tuple(sorted((float(le), float(n)) for le, n in data["buckets"])),
            latency_sum=float(data["latency_sum"]),
            latency_count=float(data["latency_count"]),
            reset=bool(data.get("reset", False)),
        )


def parse(texts: list[str]) -> Sample:
    """Sum the /metrics texts of a release's replicas into one Sample."""
    total = Sample()
    for i, text in enumerate(texts, 1):
        total = _combine(total, _parse_one(text, f"replica {i} of {len(texts)}"), 1, "the replicas")
    return total


def window(before: Sample, after: Sample) -> Sample:
    """What happened between two snapshots of the same release.

    When a count went down, a replica restarted or left between them: like
    Prometheus' increase() after a counter reset, `after` is taken as it is
    (marked `reset`), which may count requests from before `before` but is never
    negative. The latency sum is not used to spot a reset: summing replicas in
    another order can move a float sum down by a rounding error.
    """
    went_down = any(after.requests.get(outcome, 0) < n for outcome, n in before.requests.items())
    after_buckets = dict(after.buckets)
    went_down = went_down or any(after_buckets.get(le, 0) < n for le, n in before.buckets)
    if went_down or after.latency_count < before.latency_count:
        return replace(after, reset=True)
    return _combine(after, before, -1, "the two snapshots")


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The q-quantile of a cumulative histogram, as PromQL's histogram_quantile estimates it.

    Linear interpolation inside the bucket the rank falls in, from 0 for the
    lowest bucket; a rank in the +Inf bucket gives the largest finite bound (the
    true value is at least that). None when there is nothing to estimate from.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"a quantile is from 0 to 1, not {q}")
    ordered = sorted(buckets)
    if not ordered:
        return None
    if not math.isinf(ordered[-1][0]):
        raise ValueError("a histogram needs its +Inf bucket to estimate quantiles")
    bounds = [le for le, _ in ordered]
    counts = []
    for _, n in ordered:  # cumulative counts never go down; take the envelope as PromQL does
        counts.append(max(n, counts[-1]) if counts else n)
    if len(ordered) < 2 or counts[-1] == 0:
        return None
    rank = q * counts[-1]
    b = next(i for i, n in enumerate(counts) if n >= rank and n > 0)
    if b == len(counts) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, below = (bounds[b - 1], counts[b - 1]) if b else (0.0, 0.0)
    return start + (bounds[b] - start) * (rank - below) / (counts[b] - below)


class InvalidThresholds(ValueError):
    """Every bad field at once; `fields` maps a field name to its messages."""

    def __init__(self, errors: dict[str, list[str]]):
        self.fields = errors
        super().__init__("; ".join(f"{name}: {' '.join(messages)}" for name, messages in errors.items()))


@dataclass(frozen=True)
class Thresholds:
    """What a release must meet during analysis; a latency or error threshold left out is not checked.

    When fewer than `min_requests` requests arrive in the window, error rate and
    latency are not judged and `on_no_traffic` decides. It is "pass" by default so
    a quiet service (a canary's share of a few requests a minute, a weekend) still
    rolls out on readiness alone; set "fail" where traffic is certain and its
    absence means the route is broken.
    """

    max_error_rate: float | None = None  # 0..1 of the requests in the window
    max_latency_p50_ms: float | None = None
    max_latency_p95_ms: float | None = None
    max_latency_p99_ms: float | None = None
    min_requests: int = 1
    on_no_traffic: str = "pass"  # "pass" | "fail"

    @classmethod
    def from_dict(cls, data: dict | None) -> Thresholds:
        if data is not None and not isinstance(data, dict):
            raise InvalidThresholds({"analysis": [f"must be an object of thresholds, not {data!r}"]})
        data = data or {}
        known = [f.name for f in fields(cls)]
        errors = {
            key: [f"is not a threshold; the known ones are {', '.join(known)}"] for key in data if key not in known
        }
        for name, value in data.items():
            if name in known and (message := _threshold_error(name, value)):
                errors[name] = [message]
        if errors:
            raise InvalidThresholds(errors)
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


def _threshold_error(name: str, value: object) -> str | None:
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if name == "on_no_traffic":
        return None if value in ("pass", "fail") else f'must be "pass" or "fail", not {value!r}'
    if name == "min_requests":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return None if ok else f"must be a whole number of requests, 0 or more, not {value!r}"
    if value is None:
        return None  # not checked
    if name == "max_error_rate":
        return None if number and 0 <= value <= 1 else f"must be a fraction from 0 to 1 (0.01 is 1%), not {value!r}"
    return None if number and value > 0 else f"must be a number of milliseconds above 0, not {value!r}"


@dataclass(frozen=True)
class Check:
    name: str  # readiness, requests, error_rate, latency_p50, latency_p95, latency_p99
    passed: bool
    measured: float | None
    threshold: float | None
    unit: str  # replicas, requests, ratio, ms
    detail: str  # a phrase a person can act on, e.g. "p95 latency 812 ms > 500 ms"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Analysis:
    passed: bool
    checks: list[Check]

    def summary(self) -> str:
        """The failed checks with their measured values against the thresholds; or what passed."""
        failed = [check.detail for check in self.checks if not check.passed]
        if failed:
            return "; ".join(failed)
        return "passed: " + "; ".join(check.detail for check in self.checks)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "summary": self.summary(), "checks": [c.to_dict() for c in self.checks]}


def judge(thresholds: Thresholds, ready: int, desired: int, sample: Sample) -> Analysis:
    """Judge a window of one release: its readiness, then its traffic, errors and latency."""
    checks = [_readiness(ready, desired), _requests(thresholds, sample)]
    if sample.total > 0 and sample.total >= thresholds.min_requests:
        if thresholds.max_error_rate is not None:
            checks.append(_error_rate(thresholds.max_error_rate, sample))
        for label, q in QUANTILES:
            limit = getattr(thresholds, f"max_latency_{label}_ms")
            if limit is not None and (check := _latency(label, q, limit, sample)):
                checks.append(check)
    return Analysis(all(check.passed for check in checks), checks)


def _readiness(ready: int, desired: int) -> Check:
    passed = desired > 0 and ready >= desired
    detail = f"{ready} of {desired} replicas ready" if desired > 0 else "no replicas desired: nothing serves it"
    return Check("readiness", passed, ready, desired, "replicas", detail)


def _requests(thresholds: Thresholds, sample: Sample) -> Check:
    n, least = sample.total, thresholds.min_requests
    if n > 0 and n >= least:
        passed, detail = True, f"{_plural(n, 'request')} in the window"
    elif n >= least:  # min_requests 0 and no traffic: nothing to judge, and that is allowed
        passed, detail = True, "no requests in the window: error rate and latency not judged"
    else:
        counted = "no requests in the window"
        if n:
            counted = f"only {_plural(n, 'request')} in the window, fewer than the {least} required"
        passed = thresholds.on_no_traffic == "pass"
        detail = f"{counted}: error rate and latency not judged"
        detail += " (on_no_traffic is 'pass')" if passed else "; on_no_traffic is 'fail': is traffic reaching it?"
    if sample.reset:
        detail += " (a replica restarted or left during the window: counts go back to each replica's start)"
    return Check("requests", passed, n, least, "requests", detail)


def _error_rate(limit: float, sample: Sample) -> Check:
    rate = sample.errors / sample.total
    passed = rate <= limit
    shown, threshold = _pair(rate * 100, limit * 100, 1)
    detail = (
        f"error rate {shown}% {'≤' if passed else '>'} {threshold}% "
        f"({sample.errors} of {_plural(sample.total, 'request')} failed)"
    )
    return Check("error_rate", passed, rate, limit, "ratio", detail)


def _latency(label: str, q: float, limit_ms: float, sample: Sample) -> Check | None:
    seconds = quantile(q, sample.buckets)
    if seconds is None:
        return None  # requests without a latency (clients that hung up): error_rate judges those
    ms = seconds * 1000
    top_count = sample.buckets[-2][1] if len(sample.buckets) > 1 else 0
    if q * sample.buckets[-1][1] > top_count:  # in the +Inf bucket: only a lower bound is known
        passed = False
        detail = f"{label} latency over {ms:g} ms (the largest bucket)"
        detail += f" > {limit_ms:g} ms" if ms > limit_ms else f", so not known to be ≤ {limit_ms:g} ms"
    else:
        passed = ms <= limit_ms
        shown, threshold = _pair(ms, limit_ms, 0)
        detail = f"{label} latency {shown} ms {'≤' if passed else '>'} {threshold} ms"
    return Check(f"latency_{label}", passed, ms, limit_ms, "ms", detail)


def _parse_one(text: str, where: str) -> Sample:
    requests: dict[str, float] = {}
    buckets: dict[float, float] = {}
    latency_sum = latency_count = 0.0
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == REQUESTS:
                    outcome = s.labels.get("outcome", "")
                    requests[outcome] = requests.get(outcome, 0.0) + s.value
                elif s.name == f"{LATENCY}_bucket":
                    le = float(s.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + s.value
                elif s.name == f"{LATENCY}_sum":
                    latency_sum += s.value
                elif s.name == f"{LATENCY}_count":
                    latency_count += s.value
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{where}: its /metrics is not Prometheus text: {exc}") from None
    if not requests:
        raise ValueError(f"{where}: its /metrics has no {REQUESTS}; is it the Slipway inference runtime?")
    return Sample(requests, tuple(sorted(buckets.items())), latency_sum, latency_count)


def _combine(a: Sample, b: Sample, sign: int, what: str) -> Sample:
    """a + b (sign 1) or a - b (sign -1), series by series; no buckets on one side counts as zeros."""
    if a.buckets and b.buckets and [le for le, _ in a.buckets] != [le for le, _ in b.buckets]:
        raise ValueError(
            f"{what} have different latency buckets ({[le for le, _ in a.buckets]} and "
            f"{[le for le, _ in b.buckets]}): do they run different runtime versions?"
        )
    requests = {k: a.requests.get(k, 0.0) + sign * b.requests.get(k, 0.0) for k in a.requests | b.requests}
    a_counts, b_counts = dict(a.buckets), dict(b.buckets)
    bounds = [le for le, _ in a.buckets or b.buckets]
    buckets = tuple((le, a_counts.get(le, 0.0) + sign * b_counts.get(le, 0.0)) for le in bounds)
    return Sample(
        requests,
        buckets,
        max(0.0, a.latency_sum + sign * b.latency_sum),
        a.latency_count + sign * b.latency_count,
    )


def _pair(measured: float, threshold: float, decimals: int) -> tuple[str, str]:
    """Both numbers at the fewest decimals (at least `decimals`) that keep them apart when they differ."""
    shown_threshold = f"{threshold:g}"
    d = max(decimals, len(shown_threshold.partition(".")[2]))
    while True:
        a, b = f"{measured:.{d}f}", f"{threshold:.{d}f}"
        if a != b or measured == threshold or d >= 6:
            return a, b
        d += 1


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
