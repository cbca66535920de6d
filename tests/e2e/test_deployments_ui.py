"""Issue 5 in a real browser: environments, deploying, a rollout followed live, promote, roll back, history.

The first tests move a rollout's rows by hand, as the worker would, and check the
page follows without a reload (how fast is measured by `make bench-rollouts`, not here); their rollouts hold a lease no
worker can take, so a worker running for other tests leaves them alone. The last
test runs the whole flow on the real worker and the real local target.

Run with SLIPWAY_E2E_SHOTS=/tmp to keep /tmp/ui-*.png screenshots of the pages.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from playwright.sync_api import Page, expect

from controlplane.audit import Actor
from deployments import services
from deployments.ledger import record_serving
from deployments.models import Deployment, Environment, Release, Rollout, RolloutEvent
from deployments.plans import compile_plan
from deployments.runtime_settings import parse_runtime_settings, settings_to_dict
from registry.models import Model, ModelVersion
from tests.conftest import wait_for
from tests.deployments.rollout_models import write_constant
from tests.deployments.rollouts import answers, upload
from tests.e2e.conftest import log_in, shoot, watch_polls
from tests.factories import bulk_versions

pytestmark = pytest.mark.e2e

CANARY = {"strategy": "canary", "steps": [{"set_weight": 25}, {"pause": {}}, {"set_weight": 50}]}
HELD = "e2e test: no worker may advance this rollout"


def stay_on_this_page(page: Page) -> None:
    page.evaluate("window.slipwayMark = 'not reloaded'")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.slipwayMark") == "not reloaded", "the page reloaded"


def record_states(page: Page) -> None:
    """Collect every state the rollout badge shows, however briefly, in window.seenStates."""
    page.evaluate(
        """() => {
            window.seenStates = [];
            const note = () => {
                const badge = document.querySelector("#rollout-state .badge");
                const state = badge && badge.dataset.state;
                if (state && window.seenStates.at(-1) !== state) window.seenStates.push(state);
            };
            note();
            new MutationObserver(note).observe(document.querySelector("main"), {childList: true, subtree: true});
        }"""
    )


def seen_states(page: Page) -> list[str]:
    return page.evaluate("window.seenStates")


def badge(page: Page):
    return page.locator("#rollout-state .badge")


# --- Rows moved by hand -----------------------------------------------------------------------
@pytest.fixture
def iris(alice, live_db):
    actor = Actor(user=alice)
    services.create_environment("dev", actor=actor, description="Runtime processes on this machine.")
    services.create_environment("staging", actor=actor, promotes_from="dev")
    model = Model.objects.create(name="iris", created_by=alice)
    bulk_versions(model, 2, uploaded_by=alice)
    return model


def dev() -> Environment:
    return Environment.objects.get(name="dev")


def held_rollout(deployment: Deployment, version: int, *, plan: dict | None, user, reason: str = "") -> Rollout:
    """A release and its rollout as services.deploy makes them, but leased so that only the test moves it."""
    current = deployment.current_release
    settings = settings_to_dict(parse_runtime_settings({"replicas": 2}))
    normalised, steps = compile_plan(plan, replicas=2, first=current is None)
    number = deployment.latest_release + 1
    Deployment.objects.filter(pk=deployment.pk).update(latest_release=number)
    deployment.latest_release = number
    release = Release.objects.create(
        deployment=deployment,
        number=number,
        slot=number,
        model_version=ModelVersion.objects.get(model=deployment.model, version=version),
        settings=settings,
        reason=reason,
        created_by=user,
    )
    rollout = Rollout.objects.create(
        deployment=deployment,
        release=release,
        previous_release=current,
        plan=normalised,
        steps=steps,
        requested_by=user,
        lease_owner=HELD,
        lease_expires_at=timezone.now() + timedelta(hours=1),
    )
    event(rollout, "action", f"{user.username} started a deploy of iris v{version} as release {number}: {reason}")
    return rollout


def event(rollout: Rollout, kind: str, message: str) -> None:
    RolloutEvent.objects.create(rollout=rollout, kind=kind, message=message)


def move(rollout: Rollout, **fields) -> None:
    """What one step of the worker writes: the rollout's fields, with its revision bumped."""
    Rollout.objects.filter(pk=rollout.pk).update(revision=rollout.revision + 1, updated_at=timezone.now(), **fields)
    rollout.refresh_from_db()


def status_of(weights: dict[int, int], ready: dict[int, int], warnings: dict[int, list[str]] | None = None) -> dict:
    return {
        "endpoint": "http://127.0.0.1:18080",
        "weights": {str(n): w for n, w in weights.items()},
        "releases": {
            str(n): {
                "desired": 2,
                "updated": 2,
                "ready": ready[n],
                "available": ready[n],
                "done": ready[n] == 2,
                "failed": None,
                "message": "" if ready[n] == 2 else f"{ready[n]} of 2 updated replicas are available",
                "warnings": (warnings or {}).get(n, []),
            }
            for n in weights
        },
    }


def succeed(rollout: Rollout) -> None:
    move(rollout, state="succeeded", weight=100, step_index=len(rollout.steps), finished_at=timezone.now())
    Deployment.objects.filter(pk=rollout.deployment_id).update(
        current_release=rollout.release, endpoint="http://127.0.0.1:18080"
    )
    event(rollout, "info", f"Release {rollout.release.number} serves all traffic at http://127.0.0.1:18080")


def shown_live(page: Page, locator, text: str) -> None:
    """The page shows `text` at `locator` by itself (polling), with no reload."""
    expect(locator).to_have_text(text, timeout=5_000)


def test_the_deployment_page_follows_a_rollout_live_and_its_buttons_act(page: Page, alice, iris):
    deployment = Deployment.objects.create(model=iris, environment=dev(), key="iris-dev", created_by=alice)
    first = held_rollout(deployment, 1, plan=None, user=alice, reason="first light")
    succeed(first)
    deployment.refresh_from_db()
    rollout = held_rollout(deployment, 2, plan=CANARY, user=alice, reason="better recall on setosa")

    log_in(page, alice)
    live_polls = watch_polls(page, "/live/")
    page.goto(f"/deployments/{deployment.pk}/")
    stay_on_this_page(page)
    record_states(page)
    expect(badge(page)).to_have_text("pending")
    expect(page.locator("#rollout-step")).to_contain_text("Waiting for a worker")
    expect(page.get_by_role("button", name="Abort")).to_be_visible()
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)

    move(rollout, state="deploying")
    event(rollout, "transition", "pending → deploying")
    shown_live(page, badge(page), "deploying")

    move(
        rollout,
        state="progressing",
        step_index=0,
        weight=25,
        step_started_at=timezone.now(),
        status=status_of(
            {1: 75, 2: 25}, {1: 2, 2: 1}, {2: ["replica iris-dev-2-b: CrashLoopBackOff (restarted 2 times)"]}
        ),
    )
    event(rollout, "step", "Step 1 of 4: send 25% of traffic to the new release")
    event(rollout, "warning", "Release 2: replica iris-dev-2-b: CrashLoopBackOff (restarted 2 times)")
    shown_live(page, page.locator("#rollout-weight"), "25%")
    expect(badge(page)).to_have_text("progressing")
    expect(page.locator("#rollout-step")).to_contain_text("Step 1 of 4: send 25% of traffic to the new release")
    expect(page.locator(".warnings")).to_contain_text("CrashLoopBackOff")
    expect(page.locator("table.replicas tbody tr")).to_have_count(2)
    expect(page.get_by_role("button", name="Pause")).to_be_visible()
    shoot(page, "ui-deployment-warning")

    move(
        rollout,
        state="paused",
        step_index=1,
        pause_reason="The plan pauses here until someone resumes.",
        status=status_of({1: 75, 2: 25}, {1: 2, 2: 2}),
        analysis={
            "passed": True,
            "summary": "passed",
            "checks": [
                {"name": "readiness", "passed": True, "measured": 2, "threshold": 2, "unit": "replicas",
                 "detail": "2 of 2 replicas ready"},
                {"name": "requests", "passed": True, "measured": 412, "threshold": 20, "unit": "requests",
                 "detail": "412 requests in the window"},
                {"name": "error_rate", "passed": True, "measured": 0.0024, "threshold": 0.01, "unit": "ratio",
                 "detail": "error rate 0.24% <= 1%"},
                {"name": "latency_p95", "passed": True, "measured": 38.2, "threshold": 250, "unit": "ms",
                 "detail": "p95 latency 38 ms <= 250 ms"},
            ],
        },
    )  # fmt: skip
    event(rollout, "transition", "progressing → paused")
    event(rollout, "info", "Paused by the plan: resume to go on, or promote now.")
    shown_live(page, badge(page), "paused")
    expect(page.locator("#rollout-step")).to_contain_text("Step 2 of 4: pause until resumed")
    expect(page.locator(".warnings")).to_have_count(0)
    expect(page.locator("table.analysis")).to_contain_text("0.24%")
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    shoot(page, "ui-deployment-mid-rollout")

    # Resume goes through the service, and the panel answers at once.
    page.get_by_role("button", name="Resume").click()
    expect(badge(page)).to_have_text("progressing", timeout=5_000)
    expect(page.locator("#action-message")).to_contain_text("Resumed")
    expect(page.locator("#rollout-step")).to_contain_text("Step 3 of 4")
    assert Rollout.objects.get(pk=rollout.pk).state == "progressing"

    succeed(rollout)
    shown_live(page, badge(page), "succeeded")
    expect(page.get_by_role("button", name="Promote to staging")).to_be_visible()
    expect(page.locator("#endpoint")).to_have_text("http://127.0.0.1:18080")
    assert_not_reloaded(page)
    assert seen_states(page) == ["pending", "deploying", "progressing", "paused", "progressing", "succeeded"]

    # Finished: the fast poll stopped with 286 ...
    wait_for(lambda: 286 in live_polls, timeout=5, what="the live panel to answer 286")
    asked = len(live_polls)
    page.wait_for_timeout(1500)
    assert len(live_polls) == asked, f"the live panel kept polling after the rollout ended: {live_polls}"

    # ... but a rollout started elsewhere (the API, another tab) still shows up, and is followed live.
    third = held_rollout(deployment, 1, plan=None, user=alice, reason="started from the API")
    expect(page.locator("#rollout-title")).to_contain_text(f"Rollout #{third.pk}", timeout=3_500)
    expect(badge(page)).to_have_text("pending")
    move(third, state="deploying")
    shown_live(page, badge(page), "deploying")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Abort").click()
    expect(badge(page)).to_have_text("reverting", timeout=5_000)
    assert Rollout.objects.get(pk=third.pk).failure_reason == "Aborted by alice"
    assert_not_reloaded(page)


def test_history_lists_releases_newest_first_with_how_each_ended(page: Page, alice, iris):
    deployment = Deployment.objects.create(model=iris, environment=dev(), key="iris-dev", created_by=alice)
    for version, reason in [(1, "first light"), (2, "retrained on the March data")]:
        succeed(held_rollout(deployment, version, plan=None, user=alice, reason=reason))
        deployment.refresh_from_db()
    failed = held_rollout(deployment, 1, plan=CANARY, user=alice, reason="a canary of the old one")
    move(
        failed,
        state="rolled_back",
        finished_at=timezone.now() + timedelta(seconds=95),
        failure_reason="Analysis failed: error rate 7.5% > 1% (1,204 requests); p95 latency 812 ms > 250 ms",
    )
    # A rollback as services.rollback makes it (tested without a browser), but one no worker moves.
    rollback = held_rollout(deployment, 1, plan=None, user=alice, reason="v2 drifts on the night traffic")
    Release.objects.filter(pk=rollback.release_id).update(kind="rollback", source=deployment.releases.get(number=1))
    Deployment.objects.filter(pk=deployment.pk).update(
        pinned=True, pinned_reason="rolled back to release 1: v2 drifts on the night traffic"
    )

    log_in(page, alice)
    page.goto(f"/deployments/{deployment.pk}/history/")
    rows = page.locator("table.history tbody tr")
    expect(rows).to_have_count(4)
    expect(rows.nth(0)).to_contain_text("rollback")
    expect(rows.nth(0)).to_contain_text("to release 1")
    expect(rows.nth(0)).to_contain_text("v2 drifts on the night traffic")
    expect(rows.nth(1)).to_contain_text("rolled back")
    expect(rows.nth(1)).to_contain_text("error rate 7.5% > 1%")
    expect(rows.nth(1)).to_contain_text("1 min 35 s")
    expect(rows.nth(3)).to_contain_text("first light")
    expect(rows.nth(3).locator(".badge")).to_have_text("succeeded")
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 1280, f"the history scrolls sideways ({width}px wide)"
    shoot(page, "ui-history")

    page.get_by_role("link", name="iris in dev").click()
    page.wait_for_load_state()  # htmx has set up the buttons (a click before that does nothing)
    expect(page.locator(".pinned")).to_contain_text("rolled back to release 1: v2 drifts on the night traffic")
    shoot(page, "ui-deployment-pinned")
    page.get_by_role("button", name="Unpin").click()
    expect(page.locator("#action-message")).to_contain_text("takes promotions again")
    expect(page.locator(".pinned")).to_have_count(0)

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Deployments").click()
    row = page.locator("table.deployments tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator(".badge")).to_have_text("pending")  # the rollback's rollout, which nothing advances here
    expect(row).to_contain_text("release 2")
    shoot(page, "ui-deployments")


def test_the_environment_page_says_what_was_serving_at_a_time_chosen_in_the_form(page: Page, alice, iris):
    deployment = Deployment.objects.create(model=iris, environment=dev(), key="iris-dev", created_by=alice)
    first = held_rollout(deployment, 1, plan=None, user=alice, reason="first light")
    succeed(first)
    deployment.refresh_from_db()
    second = held_rollout(deployment, 2, plan=CANARY, user=alice, reason="better recall on setosa")
    hour_ago = timezone.now().replace(microsecond=0) - timedelta(hours=1)
    Environment.objects.filter(name="dev").update(created_at=hour_ago - timedelta(days=1))
    with transaction.atomic():
        record_serving(deployment.pk, {first.release_id: 100}, hour_ago)
        record_serving(deployment.pk, {first.release_id: 75, second.release_id: 25}, hour_ago + timedelta(minutes=30))

    log_in(page, alice)
    page.goto(f"/deployments/{deployment.pk}/history/")
    page.get_by_role("link", name="What was serving in dev at…").click()
    rows = page.locator("table.serving tbody tr")
    expect(rows).to_have_count(2)  # now: the canary and the release it is measured against
    expect(rows.nth(0)).to_contain_text("75%")
    expect(rows.nth(1)).to_contain_text("25%")
    expect(rows.nth(1)).to_contain_text("better recall on setosa")

    page.get_by_label("Time (UTC)").fill((hour_ago + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S"))
    page.get_by_role("button", name="Show").click()
    expect(rows).to_have_count(1)
    expect(rows.nth(0)).to_contain_text("100%")
    expect(rows.nth(0)).to_contain_text("first light")
    assert_styled_table(page)
    shoot(page, "ui-environment-serving")

    page.get_by_label("Time (UTC)").fill((hour_ago - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S"))
    page.get_by_role("button", name="Show").click()
    expect(rows).to_have_count(1)
    expect(rows.nth(0)).to_contain_text("Nothing served in dev at that time.")

    page.get_by_label("Time (UTC)").fill((hour_ago - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S"))
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#serving-note")).to_contain_text("Environment dev was created at")


def assert_styled_table(page: Page) -> None:
    """The bundled stylesheet applies: the table is laid out, not raw HTML."""
    padding = page.locator("table.serving td").first.evaluate("e => getComputedStyle(e).paddingLeft")
    assert padding not in ("", "0px"), padding


def test_environments_are_created_from_their_page(page: Page, alice, live_db):
    log_in(page, alice)
    page.get_by_role("link", name="Environments").click()
    expect(page.get_by_text("No environments yet")).to_be_visible()
    kubernetes = page.locator("fieldset.kubernetes-only")
    expect(kubernetes).to_be_hidden()  # the local target takes no settings
    page.get_by_label("Target").select_option("kubernetes")
    expect(kubernetes).to_be_visible()
    expect(page.get_by_label("Namespace")).to_be_visible()
    page.get_by_label("Target").select_option("local")

    page.get_by_label("Name", exact=True).fill("dev")
    page.get_by_role("button", name="Create environment").click()
    expect(page.locator("table.environments tbody tr")).to_have_count(1)

    page.get_by_label("Name", exact=True).fill("staging")
    page.get_by_label("Promotes from").select_option("dev")
    page.get_by_label("Default plan (JSON, optional)").fill('{"strategy": "canary", "steps": [{"set_weight": 10}]')
    page.get_by_role("button", name="Create environment").click()
    expect(page.get_by_role("alert")).to_contain_text("The default plan is not valid JSON")
    page.get_by_label("Default plan (JSON, optional)").fill('{"strategy": "canary", "steps": [{"set_weight": 10}]}')
    page.get_by_role("button", name="Create environment").click()
    row = page.locator("table.environments tbody tr", has_text="staging")
    expect(row).to_contain_text("dev")
    expect(row).to_contain_text("canary")
    shoot(page, "ui-environments")


def test_the_deploy_form_offers_a_canary_example_and_explains_refusals(page: Page, alice, iris):
    log_in(page, alice)
    page.goto("/models/iris/versions/2/")
    form = page.locator("#deploy-form")
    form.get_by_label("Strategy").select_option("canary")
    plan = form.get_by_label("Plan (JSON)")
    expect(plan).to_be_visible()
    assert json.loads(plan.input_value())["steps"][0] == {"set_weight": 20}
    plan.fill('{"steps": [{"set_weight": 500}]}')
    form.get_by_label("Reason").fill("try the new one")
    shoot(page, "ui-deploy-form")
    form.get_by_role("button", name="Deploy v2").click()
    expect(page.get_by_role("alert")).to_contain_text("set_weight must be a whole percent from 1 to 100")
    expect(page.locator("#deploy-form").get_by_label("Reason")).to_have_value("try the new one")
    assert not Rollout.objects.exists()


# --- The real worker and the real local target -------------------------------------------------
ROLLOUT_TIMEOUT_MS = 120_000


@pytest.mark.worker
@pytest.mark.slow
def test_deploy_watch_promote_roll_back_and_read_the_history(page: Page, alice, api, model_name, tmp_path):
    v1 = upload(api, model_name, write_constant(tmp_path, 1.0))
    v2 = upload(api, model_name, write_constant(tmp_path, 2.0))
    log_in(page, alice)

    page.goto("/environments/")
    page.get_by_label("Name", exact=True).fill("dev")
    page.get_by_role("button", name="Create environment").click()
    page.get_by_label("Name", exact=True).fill("staging")
    page.get_by_label("Promotes from").select_option("dev")
    page.get_by_role("button", name="Create environment").click()
    expect(page.locator("table.environments tbody tr")).to_have_count(2)

    # The first deploy goes straight to all traffic; the page follows it without a reload.
    page.goto(f"/models/{model_name}/versions/{v1}/")
    page.locator("#deploy-form").get_by_label("Reason").fill("first light")
    page.get_by_role("button", name=f"Deploy v{v1}").click()
    expect(page).to_have_url(re.compile(r"/deployments/\d+/$"))
    dev_url = page.url
    stay_on_this_page(page)
    record_states(page)
    expect(badge(page)).to_have_text("succeeded", timeout=ROLLOUT_TIMEOUT_MS)
    assert_not_reloaded(page)
    states = seen_states(page)
    assert states[-2:] == ["progressing", "succeeded"], states
    endpoint = page.locator("#endpoint").inner_text()
    assert answers(endpoint, model_name, 3) == [1.0] * 3

    # The second is a canary that waits for a person at half the traffic.
    page.goto(f"/models/{model_name}/versions/{v2}/")
    form = page.locator("#deploy-form")
    form.get_by_label("Strategy").select_option("canary")
    form.get_by_label("Plan (JSON)").fill('{"steps": [{"set_weight": 50}, {"pause": {}}]}')
    form.get_by_label("Reason").fill("retrained")
    form.get_by_role("button", name=f"Deploy v{v2}").click()
    expect(page).to_have_url(dev_url)
    stay_on_this_page(page)
    record_states(page)
    expect(badge(page)).to_have_text("paused", timeout=ROLLOUT_TIMEOUT_MS)
    expect(page.locator("#rollout-step")).to_contain_text("Step 2 of 3: pause until resumed")
    expect(page.locator("#rollout-weight")).to_have_text("50%")
    expect(page.locator("table.replicas tbody tr")).to_have_count(2)
    assert sorted(answers(endpoint, model_name, 4)) == [1.0, 1.0, 2.0, 2.0]
    shoot(page, "ui-deployment-canary-paused")
    page.get_by_role("button", name="Resume").click()
    expect(badge(page)).to_have_text("succeeded", timeout=ROLLOUT_TIMEOUT_MS)
    assert_not_reloaded(page)
    assert seen_states(page)[-3:] == ["paused", "progressing", "succeeded"], seen_states(page)
    assert answers(endpoint, model_name, 3) == [2.0] * 3

    # Promote what dev serves to staging.
    page.get_by_role("button", name="Promote to staging").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(f"{model_name} in staging")
    expect(badge(page)).to_have_text("succeeded", timeout=ROLLOUT_TIMEOUT_MS)
    expect(page.locator(".summary")).to_contain_text(f"{model_name} v{v2}")

    # Roll dev back to v1, with a reason: a new release, and the deployment pinned.
    page.goto(dev_url)
    page.get_by_text("Roll back…").click()
    page.get_by_label("Reason").fill("v2 drifts on night traffic")
    page.get_by_role("button", name="Roll back").click()
    expect(page.locator("#rollout-title")).to_contain_text("release 3: rollback")
    expect(badge(page)).to_have_text("succeeded", timeout=ROLLOUT_TIMEOUT_MS)
    expect(page.locator(".summary")).to_contain_text(f"{model_name} v{v1}")
    expect(page.locator(".pinned")).to_contain_text("v2 drifts on night traffic")
    assert answers(endpoint, model_name, 3) == [1.0] * 3

    page.get_by_role("button", name="History").click()
    rows = page.locator("table.history tbody tr")
    expect(rows).to_have_count(3)
    for n, text in enumerate(["v2 drifts on night traffic", "retrained", "first light"]):
        expect(rows.nth(n)).to_contain_text(text)
        expect(rows.nth(n).locator("td.details .badge")).to_have_text("succeeded")
    expect(rows.nth(0)).to_contain_text("to release 1")
    shoot(page, "ui-history-real")
