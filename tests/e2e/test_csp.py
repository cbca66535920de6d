"""Every page under the strict Content Security Policy, in a real browser: nothing refused, and still working.

The policy allows scripts, styles and connections from the server itself only, and no
eval: a page that still had an inline script, a style="..." attribute, an onclick= or a
javascript: URL would be refused by Chromium, which these tests watch for in two ways
(the console's "Refused to ..." lines and `securitypolicyviolation` events).
"""

from __future__ import annotations

import json
import re

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from controlplane.audit import Actor
from controlplane.models import Role
from controlplane.roles import grant_role
from deployments import services as deployment_services
from deployments.models import ApprovalRequest, BuildStatus, Deployment, ImageBuild, Release
from registry import services
from registry.models import ModelVersion, VersionStatus
from tests.e2e.conftest import log_in, shoot, watch_polls
from tests.e2e.test_pages import add_version
from tests.factories import UserFactory
from tests.models_zoo import MLP_SIGNATURE

pytestmark = pytest.mark.e2e

WATCH_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.reportCspViolation(`${event.violatedDirective} blocked ${event.blockedURI || "inline"}`
    + ` at ${event.sourceFile || document.location.pathname}:${event.lineNumber} (${event.sample || ""})`);
});
"""


class Refusals:
    """What the browser refused on the pages this test visited, and where."""

    def __init__(self, page: Page):
        self.page = page
        self.seen: list[str] = []
        page.expose_function("reportCspViolation", lambda text: self.seen.append(f"{page.url}: {text}"))
        page.add_init_script(WATCH_VIOLATIONS)
        page.on(
            "console",
            lambda message: "Refused to" in message.text and self.seen.append(f"{page.url}: {message.text}"),
        )

    def visit(self, path: str) -> None:
        self.page.goto(path)
        self.page.wait_for_load_state("load")
        self.assert_none(path)

    def assert_none(self, where: str) -> None:
        self.page.wait_for_timeout(100)  # the event and the console line arrive just after the work that caused them
        assert not self.seen, f"the Content Security Policy refused something on {where}:\n" + "\n".join(self.seen)


@pytest.fixture
def refusals(page: Page) -> Refusals:
    return Refusals(page)


@pytest.fixture
def catalogue(alice, admin, live_db):
    """A model with a ready version, two environments, a deployment with history, and a running build."""
    actor = Actor(user=alice)
    model = services.create_model("iris", "Species from four measurements.", actor=actor)
    version = add_version(model, alice, VersionStatus.READY)
    dev = deployment_services.create_environment("dev", actor=actor, description="Processes on this machine.")
    deployment_services.create_environment("staging", actor=actor, promotes_from="dev")
    deployment = Deployment.objects.create(model=model, environment=dev, key="iris-dev", created_by=alice)
    release = Release.objects.create(
        deployment=deployment, number=1, slot=1, model_version=version, settings={}, created_by=alice
    )
    Deployment.objects.filter(pk=deployment.pk).update(current_release=release, latest_release=1)
    build = ImageBuild.objects.create(
        model_version=version,
        variant="cpu",
        base_image="python:3.11-slim-bookworm",
        runtime_version="0.1.0",
        image_ref="127.0.0.1:5000/slipway/iris:v1-0123456789ab",
        status=BuildStatus.BUILDING,
        log="Step 1/9 : FROM python:3.11-slim-bookworm\n",
        requested_by=alice,
        started_at=timezone.now(),
    )
    # A protected environment where Bob's deploy waits for approval.
    prod = deployment_services.create_environment("prod", actor=actor, required_approvals=1)
    bob = UserFactory(username="bob")
    grant_role(prod, Role.DEPLOYER, actor=actor, user=bob.username)
    waiting = deployment_services.deploy("iris", "prod", 1, actor=Actor(user=bob))[1]
    approval = ApprovalRequest.objects.get(rollout=waiting)
    return {"model": model, "version": version, "deployment": deployment, "build": build, "approval": approval}


def test_the_log_in_page_and_every_page_behind_it_run_under_the_policy(
    page: Page, refusals: Refusals, catalogue, alice
):
    refusals.visit("/login/")
    log_in(page, alice)  # the form posts to the server itself (form-action 'self') and lands on the models
    refusals.assert_none("the models list after logging in")

    deployment = catalogue["deployment"]
    for path in [
        "/models/",
        "/models/iris/",
        "/models/iris/versions/1/",
        f"/builds/{catalogue['build'].pk}/",
        "/environments/",
        "/environments/prod/",
        "/deployments/",
        f"/deployments/{catalogue['approval'].rollout.deployment_id}/",
        "/approvals/",
        f"/approvals/{catalogue['approval'].pk}/",
        f"/deployments/{deployment.pk}/",
        f"/deployments/{deployment.pk}/history/",
        "/tokens/",
        "/audit/",
    ]:
        refusals.visit(path)
        expect(page.locator("main h1")).to_be_visible()
        shoot(page, f"csp{path.replace('/', '-')}")


def test_the_upload_drop_zone_and_htmx_polling_work_under_the_policy(
    page: Page, refusals: Refusals, alice, worker, model_files
):
    services.create_model("iris", actor=Actor(user=alice))
    log_in(page, alice)
    polls = watch_polls(page, "/versions/rows/")
    refusals.visit("/models/iris/")

    # A file dropped on the zone is taken (static/slipway/slipway.js, no inline handler).
    dropped = page.evaluate_handle(
        """() => { const data = new DataTransfer(); data.items.add(new File(["x"], "dropped.pt")); return data; }"""
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": dropped})
    expect(page.locator("#dropzone-text")).to_contain_text("dropped.pt")
    expect(page.locator("#dropzone")).to_have_class(re.compile(r"\bchosen\b"))

    # htmx posts the real file with the CSRF token it reads from the page (the cookie is HttpOnly).
    page.locator("#artifact-input").set_input_files(model_files["torchscript"])
    page.get_by_label("Input signature").fill(json.dumps(MLP_SIGNATURE))
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-result")).to_contain_text("iris v1")
    expect(page.locator("#upload-progress")).to_have_attribute("value", "100")

    # The versions table polls while the version validates, and stops once the worker says ready.
    expect(page.locator("#versions .badge")).to_have_text("ready", timeout=90_000)
    assert 200 in polls and polls[-1] == 286, polls
    refusals.assert_none("the model page after an upload and its validation")
    assert ModelVersion.objects.get(model__name="iris").status == VersionStatus.READY


def test_the_deploy_form_fills_its_plan_and_explains_a_refusal_under_the_policy(
    page: Page, refusals: Refusals, catalogue, alice
):
    log_in(page, alice)
    refusals.visit("/models/iris/versions/1/")
    page.locator("#deploy-strategy").select_option("canary")
    plan = page.locator("#deploy-plan")
    expect(plan).to_have_value(re.compile(r'"set_weight": 20'))
    expect(page.locator("#deploy details").first).to_have_attribute("open", "")

    plan.fill('{"strategy": "canary", "steps": [{"set_weight": 500}]}')
    page.get_by_role("button", name="Deploy v1").click()
    expect(page.locator("#deploy [role=alert]")).to_contain_text("whole percent")
    refusals.assert_none("the deploy form after a refused deploy")
    assert not Deployment.objects.filter(environment__name="staging").exists()


def test_the_build_log_and_the_deployment_page_poll_under_the_policy(page: Page, refusals: Refusals, catalogue, alice):
    log_in(page, alice)
    build_polls = watch_polls(page, "/status/")
    refusals.visit(f"/builds/{catalogue['build'].pk}/")
    ImageBuild.objects.filter(pk=catalogue["build"].pk).update(log="Step 1/9 : FROM python\nStep 2/9 : RUN pip\n")
    expect(page.locator("#build-log")).to_contain_text("Step 2/9")
    assert build_polls and set(build_polls) == {200}, build_polls
    refusals.assert_none("the build page while it polls")

    # A deployment at rest watches for a new rollout every 2 s.
    watch = watch_polls(page, "/watch/")
    refusals.visit(f"/deployments/{catalogue['deployment'].pk}/")
    page.wait_for_timeout(2500)
    assert watch, "the deployment page did not poll"
    refusals.assert_none("the deployment page while it polls")


def test_the_api_docs_render_their_operations_and_try_one_under_the_policy(
    page: Page, refusals: Refusals, catalogue, alice
):
    log_in(page, alice)
    refusals.visit("/api/docs/")
    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible()
    assert operations.count() > 20

    # "Try it out" sends the browser's session from Swagger UI (connect-src 'self').
    listing = page.locator(".opblock-get", has=page.locator('[data-path="/api/v1/models/"]'))
    listing.locator(".opblock-summary").click()
    listing.get_by_role("button", name="Try it out").click()
    listing.get_by_role("button", name="Execute").click()
    expect(listing.locator(".live-responses-table tr.response .response-col_status")).to_have_text("200")
    expect(listing.locator(".live-responses-table")).to_contain_text('"name": "iris"')
    shoot(page, "csp-api-docs", full_page=False)
    refusals.assert_none("the API docs after trying an operation")


def test_the_admin_runs_under_the_policy(page: Page, refusals: Refusals, catalogue, admin):
    refusals.visit("/admin/login/")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill("correct horse battery staple")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Site administration")).to_be_visible()
    refusals.assert_none("the admin's index")
    refusals.visit("/admin/auth/user/")
    refusals.visit(f"/admin/auth/user/{admin.pk}/change/")
    expect(page.locator("#id_username")).to_have_value("admin")
    # Slipway's, with its icon (without one the browser asks for /favicon.ico, a 404) and a way back.
    expect(page.locator("#site-name")).to_have_text("Slipway administration")
    assert page.request.get(page.locator("link[rel=icon]").get_attribute("href")).ok
    page.get_by_role("link", name="Back to Slipway").click()
    expect(page.get_by_role("heading", name="Models", level=1)).to_be_visible()


def test_the_watch_catches_an_inline_script(page: Page, catalogue, alice):
    """The watch itself: an inline script added to a page is refused, and seen."""
    refusals = Refusals(page)
    log_in(page, alice)
    page.evaluate(
        """() => {
            const script = document.createElement("script");
            script.textContent = "window.inlineRan = true";
            document.body.append(script);
        }"""
    )
    page.wait_for_timeout(200)
    assert page.evaluate("window.inlineRan") is None
    assert any("script-src" in seen for seen in refusals.seen), refusals.seen


def test_a_locked_out_log_in_says_when_to_retry_under_the_policy(
    page: Page, refusals: Refusals, alice, live_db, settings
):
    settings.AXES_FAILURE_LIMIT = 2
    refusals.visit("/login/")
    for _ in range(2):
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill("not the password")
        page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Log-in refused for now")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("Try again in 15 minutes")
    shoot(page, "csp-locked-out")
    refusals.assert_none("the lockout page")
