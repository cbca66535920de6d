"""`make bench-rollouts`: the rollout engine's numbers for issue 5, on Slipway run as in production.

Slipway under gunicorn (gthread, the flags of controlplane/devserver.py), one Celery
worker with --beat on Redis, PostgreSQL (a bench database dropped and recreated each
run), environments on the `local` target, two constant TorchScript models uploaded
through the API (v1 answers 1.0, v2 answers 2.0).

1. Rollback vs deploy. In each of N rounds: (a) a fresh deploy of v2 with the default
   rolling plan, which keeps v1 up without traffic; (b) a one-click rollback
   (POST /rollback/) to it, which takes those processes over (warm); (c) a deploy of
   v2 that keeps nothing (keep_previous 0), then a rollback to the release it replaced,
   whose processes are gone (cold). Each is timed from the POST to the commit of
   `succeeded`; image builds are counted before and after the rollbacks.
2. UI latency in Chromium, logged in, on the page of a canary held at a long timed
   pause: (a) click Pause / Resume → the state badge changes; (b) the API pauses /
   resumes from Python → the open page shows it. p50, p95, max.

Prints one table (goals met or missed), tears every deployment down through its
target, stops the servers and exits 0. Method and numbers: docs/benchmarks.md, "Rollouts".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
from bench_registry import BENCH, BIN, ROOT, gunicorn, log, machine, percentile, recreate_database, shown, slipway_env

MODEL = "constant"
ROLLBACK_ENV, UI_ENV = "dev", "ui"
USERNAME, PASSWORD = "bench", "bench-" + secrets.token_urlsafe(12)
ROW = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]}
KEEP_NOTHING = {"strategy": "rolling", "keep_previous": 0}
# A canary that stays `progressing` for an hour unless someone acts: the page's state is ours to flip.
HELD_CANARY = {"strategy": "canary", "steps": [{"set_weight": 50}, {"pause": {"duration": "1h"}}]}
GOAL_RATIO, GOAL_P95_MS = 0.5, 1000.0
# docs/benchmarks.md, "Image builds": measured there, not here (no cluster can run on these machines).
K8S_BUILD_S = {"new version, weights only": 2.5, "first build of a runtime and base": 129.7}
# As tests/e2e/conftest.py launches it: Debian's Chromium, never a downloaded one.
CHROMIUM = os.environ.get("SLIPWAY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


# --- Slipway as production runs it ------------------------------------------------------
def bench_database_url() -> str:
    explicit = os.environ.get("SLIPWAY_BENCH_ROLLOUTS_DATABASE_URL")
    if explicit:
        return explicit
    base = os.environ.get("DATABASE_URL")
    if not base or not base.startswith(("postgres://", "postgresql://")):
        sys.exit("DATABASE_URL must point at PostgreSQL (.ci/bench-rollouts.sh finds or starts one).")
    return urllib.parse.urlsplit(base)._replace(path="/slipway_benchrollouts").geturl()


def broker_url() -> str:
    url = os.environ.get("CELERY_BROKER_URL", "")
    if not url.startswith(("redis://", "rediss://")):
        sys.exit("CELERY_BROKER_URL must point at Redis, as in production (.ci/bench-rollouts.sh finds or starts one).")
    return url


class Worker:
    """`celery worker --beat` with controlplane/devserver.py's flags; stopped with its children."""

    def __init__(self, env: dict[str, str], var_dir: Path):
        self.log_path = BENCH / "logs" / "rollouts-worker.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        celery = [str(BIN / "celery"), "-A", "controlplane"]
        # The bench database's queue only: a message left by an earlier, interrupted run must not act here.
        subprocess.run([*celery, "purge", "-f"], env=env, cwd=var_dir, check=True, capture_output=True)
        (var_dir / "celery").mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                *celery,
                "worker",
                "--beat",
                "--schedule",
                str(var_dir / "celery" / "beat-schedule"),
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
            ],
            env={**env, "PYTHONUNBUFFERED": "1"},
            cwd=var_dir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while b"ready." not in self.log_path.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Celery worker did not start; see {self.log_path}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # to the main process only: a warm shutdown, as devserver's
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def prepare(env: dict[str, str]) -> str:
    """Migrate, collect static files (served as in production), then the user and their token."""
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--no-input", "-v0"], env=env, cwd=ROOT, check=True)
    subprocess.run([*manage, "collectstatic", "--no-input", "-v0"], env=env, cwd=ROOT, check=True)
    os.environ.clear()
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Django's logging config says INFO: a line per request
    from django.contrib.auth import get_user_model
    from django.db import connection

    from controlplane.audit import Actor
    from controlplane.roles import grant_role
    from controlplane.tokens import create_token

    user = get_user_model().objects.create_user(USERNAME, password=PASSWORD, is_staff=True)
    # Admin in every environment (it creates them); not a superuser, so requests read roles as a team's would.
    grant_role(None, "admin", actor=Actor.system(), user=USERNAME)
    token = create_token(user, "bench-rollouts", actor=Actor(user=user)).raw
    connection.close()
    return token


class Api:
    """The REST API with the bench user's token, on one keep-alive connection."""

    def __init__(self, base_url: str, token: str):
        self.client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def call(self, method: str, path: str, expect: tuple[int, ...] = (200,), **kwargs) -> dict:
        response = self.client.request(method, path, **kwargs)
        if response.status_code not in expect:
            raise RuntimeError(f"{method} {path}: HTTP {response.status_code}: {response.text[:800]}")
        return response.json() if response.content else {}

    def get(self, path: str) -> dict:
        return self.call("GET", path)

    def post(self, path: str, body: dict | None = None, expect: tuple[int, ...] = (200, 201)) -> dict:
        return self.call("POST", path, expect, json=body or {})


def upload_models(api: Api, env: dict[str, str], folder: Path) -> dict[float, int]:
    """v1 answers 1.0, v2 answers 2.0 (tests/deployments/rollout_models.py), through the API, validated."""
    folder.mkdir(parents=True, exist_ok=True)
    script = (
        "import sys; from pathlib import Path; from tests.deployments.rollout_models import SIGNATURE, write_constant;"
        "import json; [write_constant(Path(sys.argv[1]), v) for v in (1.0, 2.0)]; print(json.dumps(SIGNATURE))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(folder)], env=env, cwd=ROOT, check=True, capture_output=True, text=True
    )
    signature = done.stdout.strip().splitlines()[-1]
    api.post("/api/v1/models/", {"name": MODEL, "description": "constant answers: which release served"}, (201,))
    versions = {}
    for value in (1.0, 2.0):
        with (folder / f"constant-{value:g}.pt").open("rb") as fh:
            created = api.call(
                "POST",
                f"/api/v1/models/{MODEL}/versions/",
                (201,),
                files={"artifact": (fh.name, fh, "application/octet-stream")},
                data={"signature": signature},
            )
        versions[value] = created["version"]
    deadline = time.monotonic() + 180
    for value, number in versions.items():
        while (version := api.get(f"/api/v1/models/{MODEL}/versions/{number}/"))["status"] != "ready":
            if version["status"] == "rejected" or time.monotonic() > deadline:
                raise RuntimeError(f"{MODEL} v{number} is {version['status']}: {version['rejection_reason']}")
            time.sleep(0.3)
        log(f"{MODEL} v{number} (answers {value:g}) is ready")
    return versions


# --- Rollouts, timed ----------------------------------------------------------------------
def _at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@dataclass
class Timed:
    """One rollout, timed from the POST (this machine's clock) to the server's commit of each phase."""

    kind: str
    round: int
    rollout: int
    release: int
    seconds: float  # POST sent → `succeeded` committed (the rollout's finished_at)
    answered_s: float  # POST sent → its answer (the rows and the audit event committed)
    started_s: float  # POST sent → the worker's first step committed (pending → deploying)
    routed_s: float  # POST sent → all traffic on the new release
    seen_s: float  # POST sent → this client saw `succeeded` (polling every 0.2 s)


def timed_rollout(api: Api, kind: str, round_: int, path: str, body: dict, timeout: float = 300) -> Timed:
    sent = time.time()
    answer = api.post(path, body)
    answered = time.time()
    rollout_id = answer["rollout"]["id"]
    deadline = time.monotonic() + timeout
    while True:
        rollout = api.get(f"/api/v1/rollouts/{rollout_id}/")
        if rollout["finished_at"] is not None:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"rollout {rollout_id} ({kind}) is still {rollout['state']} after {timeout:.0f} s")
        time.sleep(0.2)
    seen = time.time()
    if rollout["state"] != "succeeded":
        events = "\n".join(f"  {e['at']} {e['kind']}: {e['message']}" for e in rollout["events"])
        raise RuntimeError(
            f"rollout {rollout_id} ({kind}) ended {rollout['state']}: {rollout['failure_reason']}\n{events}"
        )
    events = rollout["events"]
    started = next(e for e in events if e["kind"] == "transition" and e["message"].startswith("pending"))
    routed = [e for e in events if e["kind"] == "step" and e["message"].startswith("100% of traffic")][-1]
    return Timed(
        kind=kind,
        round=round_,
        rollout=rollout_id,
        release=rollout["release"],
        seconds=_at(rollout["finished_at"]) - sent,
        answered_s=answered - sent,
        started_s=_at(started["at"]) - sent,
        routed_s=_at(routed["at"]) - sent,
        seen_s=seen - sent,
    )


class LocalView:
    """What the local target runs for a deployment, read through the target interface."""

    def __init__(self, deployment: dict):
        from deployments.targets import DeploymentRef, get_target

        self.target = get_target(deployment["target"])
        self.ref = DeploymentRef(
            id=deployment["id"],
            key=deployment["key"],
            model_name=deployment["model"],
            environment=deployment["environment"],
        )

    def processes(self) -> dict[int, list[str]]:
        """Slot → the replicas' names (pids) of every release the target runs."""
        return {n: [r.name for r in s.replicas] for n, s in self.target.status(self.ref).releases.items()}

    def serving(self) -> dict[int, int]:
        return {n: w for n, w in self.target.status(self.ref).weights.items() if w}


def answer_of(endpoint: str) -> float:
    response = httpx.post(f"{endpoint}/v2/models/{MODEL}/infer", json=ROW, timeout=10)
    response.raise_for_status()
    return response.json()["outputs"][0]["data"][0]


def builds_count(api: Api) -> int:
    return api.get("/api/v1/builds/")["count"]


@dataclass
class RollbackResults:
    timings: list[Timed] = field(default_factory=list)
    builds: list[tuple[str, int]] = field(default_factory=list)  # (when, ImageBuild rows through the API)


def bench_rollback(api: Api, versions: dict[float, int], rounds: int, pause_s: float) -> RollbackResults:
    """Deploy, warm rollback, deploy keeping nothing, cold rollback; N rounds, each checked on the target."""
    v1, v2 = versions[1.0], versions[2.0]
    results = RollbackResults()
    first = api.post("/api/v1/deployments/", {"model": MODEL, "environment": ROLLBACK_ENV, "version": v1})
    deployment_id = first["id"]
    wait_finished(api, first["rollout"]["id"])
    deployment = api.get(f"/api/v1/deployments/{deployment_id}/")
    endpoint, view = deployment["endpoint"], LocalView(deployment)
    assert answer_of(endpoint) == 1.0
    results.builds.append(("before the first round", builds_count(api)))
    deploy_path, rollback_path = "/api/v1/deployments/", f"/api/v1/deployments/{deployment_id}/rollback/"
    deploy_v2 = {"model": MODEL, "environment": ROLLBACK_ENV, "version": v2}
    for number in range(1, rounds + 1):
        time.sleep(pause_s)
        # (a) a fresh deploy: new processes; v1's stay up without traffic (keep_previous's default)
        before = view.processes()
        deploy = timed_rollout(api, "deploy", number, deploy_path, {**deploy_v2, "reason": f"round {number}"})
        after = view.processes()
        new_slots = set(after) - set(before)
        assert len(new_slots) == 1 and set(before) <= set(after), (before, after)
        assert answer_of(endpoint) == 2.0
        (warm_slot,) = set(before)
        time.sleep(pause_s)

        # (b) one click back to what served before: it is still up, so the rollback takes its processes over
        warm = timed_rollout(api, "rollback-warm", number, rollback_path, {"reason": f"warm, round {number}"})
        after_warm = view.processes()
        assert after_warm == {warm_slot: before[warm_slot]}, f"not a warm takeover: {before} → {after_warm}"
        assert answer_of(endpoint) == 1.0 and view.serving() == {warm_slot: 100}
        results.builds.append((f"after the warm rollback of round {number}", builds_count(api)))
        time.sleep(pause_s)

        # (c) v2 again, keeping nothing of v1; then back to v1, whose processes are gone: the cold case
        keep_nothing = timed_rollout(
            api, "deploy-keep-nothing", number, deploy_path, {**deploy_v2, "plan": KEEP_NOTHING}
        )
        gone = view.processes()
        assert len(gone) == 1 and warm_slot not in gone, f"keep_previous 0 left {gone}"
        assert answer_of(endpoint) == 2.0
        time.sleep(pause_s)
        cold = timed_rollout(api, "rollback-cold", number, rollback_path, {"reason": f"cold, round {number}"})
        after_cold = view.processes()
        assert len(after_cold) == 1 and not set(after_cold) & (set(gone) | set(before)), (gone, after_cold)
        assert answer_of(endpoint) == 1.0
        results.builds.append((f"after the cold rollback of round {number}", builds_count(api)))
        results.timings += [deploy, warm, keep_nothing, cold]
        log(
            f"round {number}/{rounds}: deploy {deploy.seconds:5.2f} s  warm rollback {warm.seconds:5.2f} s  "
            f"deploy keeping nothing {keep_nothing.seconds:5.2f} s  cold rollback {cold.seconds:5.2f} s  "
            f"(load {os.getloadavg()[0]:.1f})"
        )
    return results


def wait_finished(api: Api, rollout_id: int, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while (rollout := api.get(f"/api/v1/rollouts/{rollout_id}/"))["finished_at"] is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"rollout {rollout_id} is still {rollout['state']} after {timeout:.0f} s")
        time.sleep(0.2)
    return rollout


# --- The browser ------------------------------------------------------------------------------
# Every change of the state badge (the live panel is swapped whole by htmx), with its time in the
# DOM and at the next animation frame, the one that paints it; and every click, when it fired.
OBSERVE = """() => {
    const badge = () => document.querySelector("#rollout-state .badge");
    let last = badge() ? badge().dataset.state : null;
    window.benchChanges = [];
    window.benchClicks = [];
    new MutationObserver(() => {
        const element = badge();
        const state = element ? element.dataset.state : null;
        if (!state || state === last) return;
        last = state;
        const change = {state, text: element.textContent.trim(), domPerf: performance.now(), domWall: Date.now()};
        window.benchChanges.push(change);
        requestAnimationFrame(() => { change.framePerf = performance.now(); change.frameWall = Date.now(); });
    }).observe(document.body, {childList: true, subtree: true, characterData: true});
    document.addEventListener("click", (event) => {
        window.benchClicks.push({perf: event.timeStamp, text: event.target.textContent.trim()});
    }, true);
}"""
CHANGED = "n => window.benchChanges[n] !== undefined && window.benchChanges[n].frameWall !== undefined"


@dataclass
class UiResults:
    click_ms: list[float] = field(default_factory=list)  # click event → the badge's next frame
    click_dom_ms: list[float] = field(default_factory=list)  # click event → the DOM changed
    api_ms: list[float] = field(default_factory=list)  # the API answered → the badge's next frame
    api_dom_ms: list[float] = field(default_factory=list)
    answer_lag_ms: list[float] = field(default_factory=list)  # the row's update (before its commit) → the answer
    browser: str = ""


def held_canary(api: Api, versions: dict[float, int]) -> tuple[int, int]:
    """A deployment in the UI environment whose canary holds at 50% for an hour: (deployment, rollout)."""
    first = api.post("/api/v1/deployments/", {"model": MODEL, "environment": UI_ENV, "version": versions[1.0]})
    wait_finished(api, first["rollout"]["id"])
    canary = api.post(
        "/api/v1/deployments/",
        {"model": MODEL, "environment": UI_ENV, "version": versions[2.0], "plan": HELD_CANARY},
    )
    rollout_id = canary["rollout"]["id"]
    deadline = time.monotonic() + 300
    while True:
        rollout = api.get(f"/api/v1/rollouts/{rollout_id}/")
        if rollout["state"] == "progressing" and rollout["step_index"] == 1:
            return canary["id"], rollout_id
        if rollout["finished_at"] is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the canary did not reach its pause: {rollout['state']} {rollout['failure_reason']}")
        time.sleep(0.3)


def bench_ui(base_url: str, api: Api, deployment_id: int, rollout_id: int, samples: int, warmup: int) -> UiResults:
    from playwright.sync_api import sync_playwright

    results = UiResults()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            results.browser = f"Chromium {browser.version}"
            context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
            context.set_default_timeout(15_000)
            page = context.new_page()
            script_errors: list[str] = []
            page.on("pageerror", lambda exc: script_errors.append(str(exc)))
            page.goto("/login/")
            page.get_by_label("Username").fill(USERNAME)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(lambda url: "/login/" not in url)
            page.goto(f"/deployments/{deployment_id}/")
            page.wait_for_selector("#rollout-state .badge[data-state=progressing]")
            page.evaluate(OBSERVE)
            if page.evaluate("document.visibilityState") != "visible":
                raise RuntimeError("the page is not visible: Chromium would throttle its timers and frames")

            def click() -> tuple[float, float]:
                state = page.evaluate("document.querySelector('#rollout-state .badge').dataset.state")
                button, expected = ("Pause", "paused") if state == "progressing" else ("Resume", "progressing")
                clicks, changes = page.evaluate("[window.benchClicks.length, window.benchChanges.length]")
                page.get_by_role("button", name=button, exact=True).click()
                change = wait_change(page, changes, expected)
                fired = page.evaluate("n => window.benchClicks[n]", clicks)
                return change["framePerf"] - fired["perf"], change["domPerf"] - fired["perf"]

            def from_api() -> tuple[float, float, float]:
                state = api.get(f"/api/v1/rollouts/{rollout_id}/")["state"]
                verb, expected = ("pause", "paused") if state == "progressing" else ("resume", "progressing")
                changes = page.evaluate("window.benchChanges.length")
                answer = api.post(f"/api/v1/rollouts/{rollout_id}/{verb}/", expect=(200,))
                committed_ms = time.time() * 1000  # the answer comes after the commit; same clock as Date.now()
                assert answer["state"] == expected, answer["state"]
                lag = committed_ms - _at(answer["updated_at"]) * 1000
                change = wait_change(page, changes, expected)
                return change["frameWall"] - committed_ms, change["domWall"] - committed_ms, lag

            for _ in range(warmup):  # the first POSTs of each gunicorn worker thread, the first frames
                click()
                from_api()
            for number in range(samples):
                # Alternate which goes first, so each measures pause and resume alike; a random wait lands
                # each action anywhere in the panel's 500 ms polling period.
                for kind in ("click", "api") if number % 2 == 0 else ("api", "click"):
                    time.sleep(random.uniform(0.3, 0.8))
                    if kind == "click":
                        frame, dom = click()
                        results.click_ms.append(frame)
                        results.click_dom_ms.append(dom)
                    else:
                        frame, dom, lag = from_api()
                        results.api_ms.append(frame)
                        results.api_dom_ms.append(dom)
                        results.answer_lag_ms.append(lag)
                if (number + 1) % 10 == 0:
                    log(
                        f"UI {number + 1}/{samples}: click p50 {statistics.median(results.click_ms):.0f} ms, "
                        f"API p50 {statistics.median(results.api_ms):.0f} ms (load {os.getloadavg()[0]:.1f})"
                    )
            if script_errors:
                raise RuntimeError(f"uncaught JavaScript errors on the deployment page: {script_errors}")
        finally:
            browser.close()
    return results


def wait_change(page, before: int, expected: str) -> dict:
    """The first badge change after `before`; it must be the expected state (a flip back would be a bug)."""
    page.wait_for_function(CHANGED, arg=before, timeout=10_000)
    change = page.evaluate("n => window.benchChanges[n]", before)
    if change["state"] != expected:
        raise RuntimeError(
            f"the badge showed {change['state']} before {expected}: {page.evaluate('window.benchChanges')}"
        )
    return change


# --- Teardown -------------------------------------------------------------------------------
def teardown_everything() -> None:
    """Every deployment in the bench database, through its target: no runtime or router left running."""
    from django.db import connection

    from deployments.engine import deployment_ref, target_for
    from deployments.models import Deployment

    for deployment in Deployment.objects.select_related("environment", "model"):
        target_for(deployment).teardown(deployment_ref(deployment))
        log(f"tore down {deployment.key}")
    connection.close()


def leftovers(var_dir: Path) -> list[int]:
    """Processes still running this run's models or routers (whose command lines name the var folder)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().split(b"\0")
            if str(var_dir).encode() in b" ".join(args) and any(
                a in (b"inference_runtime", b"deployments.targets.router") for a in args
            ):
                found.append(int(cmdline.parent.name))
    return found


class LoadSampler(threading.Thread):
    """The 1-minute load average every 5 s while the benchmark runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(5.0):
            self.samples.append(os.getloadavg()[0])


# --- Report ----------------------------------------------------------------------------------
def _range(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def summarize_rollback(results: RollbackResults) -> tuple[list[str], dict]:
    kinds = ("deploy", "rollback-warm", "deploy-keep-nothing", "rollback-cold")
    by = {kind: [t for t in results.timings if t.kind == kind] for kind in kinds}
    deploys = by["deploy"]

    def ratio(kind: str) -> float:  # within each round, then the median over rounds
        return statistics.median(t.seconds / d.seconds for t, d in zip(by[kind], deploys, strict=True))

    labels = {
        "deploy": "deploy v2, rolling (v1 kept up 600 s)",
        "rollback-warm": "rollback to v1, still up (warm)",
        "deploy-keep-nothing": "deploy v2, rolling, keep_previous 0",
        "rollback-cold": "rollback to v1, no longer up (cold)",
    }
    counts = [count for _, count in results.builds]
    no_build = len(set(counts)) == 1
    lines = [
        f"1. Deploy vs one-click rollback, local target, 1 replica; {len(deploys)} interleaved rounds; seconds from "
        "the POST, medians (min-max)",
        f"   {'rollout':40} {'succeeded':>10} {'min-max':>12} {'x deploy':>9} {'answered':>9} {'picked up':>10}"
        f" {'routed':>7}",
    ]
    summary: dict = {"rounds": len(deploys)}
    for kind, label in labels.items():
        rows = by[kind]
        seconds = [t.seconds for t in rows]
        r = ratio(kind)
        summary[kind] = {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds)}
        summary[kind]["ratio_to_deploy"] = r
        lines.append(
            f"   {label:40} {statistics.median(seconds):8.2f} s {_range(seconds):>12} {r:9.2f}"
            f" {statistics.median(t.answered_s for t in rows):7.2f} s"
            f" {statistics.median(t.started_s for t in rows):8.2f} s"
            f" {statistics.median(t.routed_s for t in rows):5.2f} s"
        )
    lines.append(
        f"   image builds (GET /api/v1/builds/): {counts[0]} before the first round, {counts[-1]} after the last"
        f" rollback ({len(counts)} counts: {'never grew' if no_build else 'GREW'})"
    )
    summary["builds"] = results.builds
    for kind, name in (("rollback-warm", "warm"), ("rollback-cold", "cold")):
        r = summary[kind]["ratio_to_deploy"]
        met = r <= GOAL_RATIO and no_build
        summary[kind]["goal_met"] = met
        lines.append(
            f"   goal {name} rollback: no build and <= {GOAL_RATIO}x the deploy: {'MET' if met else 'MISSED'} "
            f"({r:.2f}x, builds {counts[0]} → {counts[-1]})"
        )
    deploy_s = summary["deploy"]["median_s"]
    lines.append("   kubernetes, DERIVED (not measured: no cluster here): deploy = image build + rollout, rollback =")
    lines.append("   rollout only; build times from docs/benchmarks.md 'Image builds', rollouts as measured above:")
    summary["kubernetes_derived"] = {}
    for what, build_s in K8S_BUILD_S.items():
        warm = summary["rollback-warm"]["median_s"] / (build_s + deploy_s)
        cold = summary["rollback-cold"]["median_s"] / (build_s + deploy_s)
        summary["kubernetes_derived"][what] = {"build_s": build_s, "warm_ratio": warm, "cold_ratio": cold}
        lines.append(
            f"     build {build_s:6.1f} s ({what}): warm rollback {warm:.3f}x, cold rollback {cold:.3f}x the deploy"
        )
    return lines, summary


def summarize_ui(results: UiResults) -> tuple[list[str], dict]:
    rows = {
        "click → badge changes (htmx POST, re-render)": (results.click_ms, results.click_dom_ms),
        "API commit → open page shows it (500 ms poll)": (results.api_ms, results.api_dom_ms),
    }
    lines = [
        f"2. UI latency, {results.browser}, logged in, deployment page of a canary held at a 1 h pause; "
        "pause/resume alternately, interleaved",
        f"   {'measured to the next frame after the change':46} {'n':>4} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7}"
        f" {'p95 DOM':>8}",
    ]
    summary = {}
    for label, (frame, dom) in rows.items():
        p50, p95, worst = percentile(frame, 0.5), percentile(frame, 0.95), max(frame)
        lines.append(f"   {label:46} {len(frame):4} {p50:7.0f} {p95:7.0f} {worst:7.0f} {percentile(dom, 0.95):8.0f}")
        summary[label] = {
            "n": len(frame),
            "p50_ms": p50,
            "p95_ms": p95,
            "max_ms": worst,
            "goal_met": p95 <= GOAL_P95_MS,
        }
    lines.append(
        f"   (the API answered {statistics.median(results.answer_lag_ms):.0f} ms, median, after it updated the row, "
        "just before its commit: the second row starts at the answer)"
    )
    for label, facts in summary.items():
        met = facts["goal_met"]
        lines.append(f"   goal p95 <= {GOAL_P95_MS:.0f} ms, {label.split(' (')[0]}: {'MET' if met else 'MISSED'}")
    return lines, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["rollback", "ui"], help="run one of the two parts")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of deploy / warm / cold rollback")
    parser.add_argument("--clicks", type=int, default=30, help="UI samples of each kind (click, API)")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between two rollouts")
    args = parser.parse_args()
    if args.rounds < 1 or args.clicks < 1:
        parser.error("--rounds and --clicks must be at least 1")

    started = time.monotonic()
    var_dir = Path(os.environ.get("SLIPWAY_BENCH_ROLLOUTS_VAR_DIR") or BENCH / "rollouts").resolve()
    shutil.rmtree(var_dir, ignore_errors=True)
    var_dir.mkdir(parents=True)
    database_url, broker = bench_database_url(), broker_url()
    report = {"machine": machine()}
    log(f"database {urllib.parse.urlsplit(database_url)._replace(netloc='…').geturl()} (dropped and recreated)")
    report["machine"]["postgresql"] = recreate_database(database_url)
    env = {**slipway_env(database_url, var_dir), "CELERY_BROKER_URL": broker}
    token = prepare(env)
    load = LoadSampler()
    load.start()
    web = worker = None
    rollback = ui = None
    try:
        log("starting Slipway under gunicorn, and a Celery worker with --beat")
        web = gunicorn("rollouts-web", ["controlplane.wsgi"], env, "/healthz")
        worker = Worker(env, var_dir)
        base_url = f"http://127.0.0.1:{web.port}"
        api = Api(base_url, token)
        for name in (ROLLBACK_ENV, UI_ENV):
            api.post("/api/v1/environments/", {"name": name, "target": "local"}, (201,))
        versions = upload_models(api, env, var_dir / "models")
        if args.only in (None, "rollback"):
            rollback = bench_rollback(api, versions, args.rounds, args.pause)
        if args.only in (None, "ui"):
            deployment_id, rollout_id = held_canary(api, versions)
            ui = bench_ui(base_url, api, deployment_id, rollout_id, args.clicks, warmup=2)
            api.post(f"/api/v1/rollouts/{rollout_id}/abort/", {"reason": "benchmark done"}, (200,))
            log(f"aborted the held canary: {wait_finished(api, rollout_id, timeout=60)['state']}")
    finally:
        load.stopped.set()
        if worker is not None:
            worker.stop()  # first, so that nothing starts a replica while the deployments go
        teardown_everything()
        if web is not None:
            web.stop()
    left = leftovers(var_dir)
    if left:
        raise RuntimeError(f"runtime or router processes still run after the teardown: {left}")

    m = report["machine"]
    m["loadavg_end"] = os.getloadavg()
    m["loadavg_during"] = load.samples
    during = load.samples or [m["loadavg_end"][0]]
    print()
    print(f"Slipway rollout benchmarks, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(
        f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}, "
        f"PostgreSQL {m['postgresql']}; load average {m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f}"
        f" at end, {min(during):.2f}/{statistics.median(during):.2f}/{max(during):.2f} min/median/max during"
    )
    summary: dict = {"machine": m}
    if rollback is not None:
        lines, summary["rollback"] = summarize_rollback(rollback)
        print("\n".join(["", *lines]))
    if ui is not None:
        lines, summary["ui"] = summarize_ui(ui)
        print("\n".join(["", *lines]))
    out = BENCH / "rollouts-results.json"
    print(f"\n({time.monotonic() - started:.0f} s; raw samples in {shown(out)}, logs in {shown(BENCH / 'logs')}/)")
    raw = {
        "rollouts": [asdict(t) for t in rollback.timings] if rollback else [],
        "ui": asdict(ui) if ui else {},
    }
    out.write_text(json.dumps({"summary": summary, "raw": raw}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
