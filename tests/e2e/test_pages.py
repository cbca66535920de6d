"""Every page in a real browser: styled by the bundled assets, readable, and doing what it says.

Run with SLIPWAY_E2E_SHOTS=/tmp/e2e-shots to keep a screenshot of each page.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.utils import timezone
from playwright.sync_api import Page, expect

from controlplane.audit import Actor
from controlplane.models import AuditEvent, RoleBinding
from controlplane.tokens import create_token
from registry import services
from registry.models import ArtifactFormat, Model, ModelVersion, VersionStatus, artifact_storage
from tests.e2e.conftest import PASSWORD, log_in, shoot, watch_polls
from tests.models_zoo import MLP_SIGNATURE

pytestmark = pytest.mark.e2e

LONG_NAME = "customer-churn-propensity-gradient-boosted-ensemble-eu-west-v2"  # 62 characters, no spaces
MLP_OUTPUTS = [{"name": "output__0", "datatype": "FP32", "shape": [-1, 3]}]
REJECTED_REASON = (
    "The model does not accept its signature (x: FP32 [-1, 5]): RuntimeError: mat1 and mat2 shapes cannot be "
    "multiplied (1x5 and 4x8). Check the input names, order, shapes and datatypes."
)


def add_version(model, user, status: str, **fields) -> ModelVersion:
    """A version row in a given state, as the validator would have left it (no worker involved)."""
    data = fields.pop("data", b"PK\x03\x04 not a real archive, never loaded by these tests")
    model.latest_version += 1
    model.save(update_fields=["latest_version"])
    settled = status in (VersionStatus.READY, VersionStatus.REJECTED)
    defaults = {
        "filename": "model.pt",
        "format": ArtifactFormat.TORCHSCRIPT,
        "signature": {"inputs": MLP_SIGNATURE["inputs"], **({"outputs": MLP_OUTPUTS} if status == "ready" else {})},
        "parameter_count": 67 if status == "ready" else None,
        "load_time_ms": 41.7 if status == "ready" else None,
        "validated_at": timezone.now() if settled else None,
    }
    return ModelVersion.objects.create(
        model=model,
        version=model.latest_version,
        artifact=artifact_storage().save(f"{model.name}/v{model.latest_version}.pt", ContentFile(data)),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        status=status,
        uploaded_by=user,
        **{**defaults, **fields},
    )


def assert_styled(page: Page) -> None:
    """Pico, our stylesheet and htmx all came from the server and took effect."""
    page.wait_for_load_state("load")  # a page reached by a click may still be fetching them
    styles = page.evaluate(
        """() => ({
            pico: getComputedStyle(document.documentElement).getPropertyValue("--pico-font-family").trim(),
            ours: getComputedStyle(document.documentElement).getPropertyValue("--slipway-ready-bg").trim(),
            header: getComputedStyle(document.querySelector("body > header")).borderBottomStyle,
            htmx: window.htmx && window.htmx.version,
        })"""
    )
    assert styles["pico"], "Pico's stylesheet did not apply"
    assert styles["ours"] and styles["header"] == "solid", "static/slipway/slipway.css did not apply"
    assert styles["htmx"] == "2.0.11", "htmx did not load"


@pytest.fixture
def alice_with_models(alice, live_db):
    actor = Actor(user=alice)
    services.create_model("fraud-detector", "Scores card payments for fraud in real time.", actor=actor)
    services.create_model("iris", "The classic: species from four measurements.", actor=actor)
    services.create_model(
        LONG_NAME,
        "A deliberately long description that goes on to explain which customers are likely to leave in the next "
        "quarter, trained on twelve months of billing, support and usage events, with calibrated probabilities "
        "for the retention team and a fairness report per region attached to every release.",
        actor=actor,
    )
    return alice


def test_the_login_page_uses_the_bundled_styles_and_says_when_the_password_is_wrong(page: Page, alice, live_db):
    page.goto("/login/")
    assert_styled(page)
    shoot(page, "01-login")

    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("didn't match")
    shoot(page, "02-login-refused")

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Models", level=1)).to_be_visible()


def test_the_models_list_starts_empty_then_searches_and_pages(page: Page, alice, live_db):
    log_in(page, alice)
    assert_styled(page)
    expect(page.get_by_text("No models yet")).to_be_visible()
    shoot(page, "03-models-empty")

    actor = Actor(user=alice)
    for i in range(30):
        services.create_model(f"model-{i:02d}", f"Experiment number {i}.", actor=actor)
    services.create_model("fraud-detector", "Scores card payments for fraud in real time.", actor=actor)
    services.create_model(LONG_NAME, "A long name must wrap, not push the table off the page.", actor=actor)
    page.reload()
    expect(page.get_by_text("Page 1 of 2")).to_be_visible()
    expect(page.locator("table tbody tr")).to_have_count(25)
    shoot(page, "04-models-page-1", full_page=False)
    page.get_by_role("link", name="Next").click()
    expect(page.get_by_text("Page 2 of 2")).to_be_visible()
    expect(page.locator("table tbody tr")).to_have_count(7)
    shoot(page, "05-models-page-2")

    page.get_by_role("searchbox").fill("fraud")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("table tbody tr")).to_have_count(1)
    expect(page.get_by_role("link", name="fraud-detector")).to_be_visible()
    shoot(page, "06-models-search")
    page.get_by_role("searchbox").fill("nothing like this")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("No model matches “nothing like this”")).to_be_visible()


def test_a_refused_model_name_is_explained_next_to_the_form(page: Page, alice_with_models):
    log_in(page, alice_with_models)
    page.get_by_label("Name").fill("Fraud_Detector")
    # The browser's own pattern check would stop the form; the server must explain too.
    page.locator("input[name=name]").evaluate("input => input.removeAttribute('pattern')")
    page.get_by_role("button", name="Create model").click()
    expect(page.get_by_role("alert")).to_contain_text("'Fraud_Detector' is not allowed")
    expect(page.get_by_label("Name")).to_have_value("Fraud_Detector")
    shoot(page, "07-models-refused-name")

    page.get_by_label("Name").fill("iris")
    page.get_by_role("button", name="Create model").click()
    expect(page.get_by_role("alert")).to_contain_text("already exists")


def test_a_models_page_shows_each_status_and_pages_its_versions(page: Page, alice_with_models):
    model = Model.objects.get(name="fraud-detector")
    for _ in range(50):
        add_version(model, alice_with_models, VersionStatus.READY)
    add_version(model, alice_with_models, VersionStatus.REJECTED, rejection_reason=REJECTED_REASON)
    add_version(model, alice_with_models, VersionStatus.READY, format=ArtifactFormat.TORCH_EXPORT, filename="m.pt2")
    add_version(model, alice_with_models, VersionStatus.VALIDATING)
    add_version(model, alice_with_models, VersionStatus.PENDING)
    log_in(page, alice_with_models)
    page.goto("/models/fraud-detector/")
    assert_styled(page)

    badges = page.locator("#versions tbody tr .badge")
    expect(badges.nth(0)).to_have_text("pending")
    expect(badges.nth(1)).to_have_text("validating")
    expect(badges.nth(2)).to_have_text("ready")
    expect(badges.nth(3)).to_have_text("rejected")
    expect(page.locator("#versions")).to_contain_text("does not accept its signature")
    expect(page.locator("#versions").get_by_text("Page 1 of 2")).to_be_visible()
    shoot(page, "08-model-detail", full_page=False)

    page.locator("#versions").get_by_role("link", name="Next").click()
    expect(page.locator("#versions").get_by_text("Page 2 of 2")).to_be_visible()
    expect(page.get_by_role("link", name="v1", exact=True)).to_be_visible()
    shoot(page, "09-model-detail-page-2")


def test_a_long_model_name_and_description_wrap(page: Page, alice_with_models):
    log_in(page, alice_with_models)
    shoot(page, "10-models-list")
    page.goto(f"/models/{LONG_NAME}/")
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 1280, f"the page scrolls sideways ({width}px wide)"
    shoot(page, "11-model-detail-long-name-no-versions")


def test_a_ready_versions_page_shows_everything_known_about_it(page: Page, alice_with_models):
    model = Model.objects.get(name="iris")
    add_version(
        model,
        alice_with_models,
        VersionStatus.READY,
        filename="iris-mlp-2026-11-23-final (copy).pt",
        metadata={
            "training_run": "https://mlflow.example.com/#/experiments/4/runs/0f4c2a9e8b7d4b1f9a3c6e5d2b1a0f9e",
            "git_commit": "3f9c2d1e8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e",
            "metrics": {"accuracy": 0.973, "f1": 0.961},
        },
        created_at=timezone.now() - timedelta(minutes=5),
    )
    log_in(page, alice_with_models)
    page.goto("/models/iris/versions/1/")
    assert_styled(page)
    facts = page.locator("#version-facts")
    expect(facts.locator(".badge")).to_have_text("ready")
    expect(facts).to_contain_text("67")
    expect(facts.locator("a[href^='https://mlflow.example.com/']")).to_be_visible()
    expect(facts).to_contain_text("0.973")
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 1280, f"the page scrolls sideways ({width}px wide)"
    shoot(page, "12-version-ready")


def test_long_metadata_values_and_file_names_wrap_on_a_versions_page(page: Page, alice_with_models):
    model = Model.objects.get(name="iris")
    run = "https://mlflow.example.com/#/experiments/4/runs/" + "0f4c2a9e8b7d4b1f" * 16
    add_version(
        model,
        alice_with_models,
        VersionStatus.READY,
        filename="iris-" + "x" * 190 + ".pt",
        metadata={"training_run": run, "tag": "t" * 300, "metrics": {"note": "n" * 300}},
    )
    log_in(page, alice_with_models)
    page.goto("/models/iris/versions/1/")
    expect(page.locator("#version-facts a[href^='https://mlflow.example.com/']")).to_be_visible()
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 1280, f"the page scrolls sideways ({width}px wide)"
    shoot(page, "13-version-long-metadata")


def test_a_rejected_versions_page_says_why_and_does_not_poll(page: Page, alice_with_models):
    model = Model.objects.get(name="iris")
    add_version(model, alice_with_models, VersionStatus.REJECTED, rejection_reason=REJECTED_REASON)
    log_in(page, alice_with_models)
    polls = watch_polls(page, "/status/")
    page.goto("/models/iris/versions/1/")
    expect(page.get_by_role("alert")).to_contain_text("mat1 and mat2 shapes cannot be multiplied")
    expect(page.locator("#version-facts")).not_to_have_attribute("hx-trigger", re.compile("every"))
    shoot(page, "13-version-rejected")
    page.wait_for_timeout(1500)
    assert polls == []


def test_pages_poll_while_a_version_validates_and_stop_once_it_settles(page: Page, alice_with_models):
    model = Model.objects.get(name="iris")
    version = add_version(model, alice_with_models, VersionStatus.VALIDATING)
    log_in(page, alice_with_models)
    facts_polls = watch_polls(page, "/status/")
    table_polls = watch_polls(page, "/versions/rows/")

    page.goto("/models/iris/versions/1/")
    expect(page.locator("#version-facts .badge")).to_have_text("validating")
    shoot(page, "14-version-validating")
    page.wait_for_timeout(2200)
    assert facts_polls and set(facts_polls) == {200}, facts_polls

    services.finish_validation(
        version.pk,
        {
            "ok": True,
            "signature": {**MLP_SIGNATURE, "outputs": MLP_OUTPUTS},
            "parameter_count": 67,
            "load_time_ms": 9.5,
        },
        actor=Actor.system(),
    )
    expect(page.locator("#version-facts .badge")).to_have_text("ready")
    expect(page.locator("#version-facts")).to_contain_text("output__0")
    # Settled and ready: the build form appears without a reload.
    expect(page.get_by_role("button", name="Build image")).to_be_visible()
    assert facts_polls[-1] == 286, facts_polls
    asked = len(facts_polls)
    page.wait_for_timeout(2200)
    assert len(facts_polls) == asked, f"the facts kept polling after the version settled: {facts_polls}"

    # The versions table of a settled model does not poll at all.
    page.goto("/models/iris/")
    expect(page.locator("#versions .badge")).to_have_text("ready")
    page.wait_for_timeout(1500)
    assert table_polls == []


def test_a_live_page_whose_user_loses_the_role_says_so_once_and_stops_polling(page: Page, alice_with_models):
    model = Model.objects.get(name="iris")
    add_version(model, alice_with_models, VersionStatus.VALIDATING)
    log_in(page, alice_with_models)
    facts_polls = watch_polls(page, "/status/")
    page.goto("/models/iris/versions/1/")
    expect(page.locator("#version-facts .badge")).to_have_text("validating")

    RoleBinding.objects.filter(user=alice_with_models).delete()  # an administrator takes the role away
    expect(page.locator("#htmx-refusal")).to_contain_text("role")
    expect(page.locator("#version-facts .badge")).to_have_text("validating")  # the page stays as it was
    assert facts_polls[-1] == 286, facts_polls
    asked = len(facts_polls)
    page.wait_for_timeout(2500)
    assert len(facts_polls) == asked, f"the page kept asking after the refusal: {facts_polls}"
    refusals = AuditEvent.objects.filter(actor=alice_with_models.username, action="page.version-status")
    assert refusals.count() == 1, list(refusals.values_list("outcome", "message"))


def test_a_new_api_token_is_shown_once_and_can_be_revoked(page: Page, alice, live_db):
    log_in(page, alice)
    page.goto("/tokens/")
    assert_styled(page)
    expect(page.get_by_text("No tokens yet")).to_be_visible()
    page.get_by_label("Token name").fill("ci-pipeline")
    page.get_by_role("button", name="Create token").click()
    token = page.locator("#new-token-value").inner_text()
    assert len(token) > 30
    expect(page.get_by_text("shown only once")).to_be_visible()
    shoot(page, "15-tokens-created")

    # Reloading the page (F5) neither posts the form again (a 409: the name is taken) nor shows the token.
    page.reload()
    expect(page.locator("#new-token-value")).to_have_count(0)
    assert token not in page.content() and "already has an active token" not in page.content()
    row = page.locator("tbody tr", has_text="ci-pipeline")
    expect(row).to_have_count(1)
    expect(row).to_contain_text(token[:8])

    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    row.get_by_role("button", name="Revoke").click()
    expect(row).to_contain_text("active")
    assert asked == ["Revoke ci-pipeline? Whatever uses it is refused from now on."]
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke").click()
    expect(page.locator("tbody tr", has_text="ci-pipeline")).to_contain_text("revoked")
    shoot(page, "16-tokens-revoked")


def test_a_user_changes_their_password_from_their_name_in_the_bar(page: Page, alice, live_db):
    log_in(page, alice)
    page.locator("header.site").get_by_role("link", name="alice").click()
    expect(page.get_by_role("heading", name="Change your password", level=1)).to_be_visible()
    assert_styled(page)
    page.get_by_label("Old password").fill(PASSWORD)
    page.get_by_label("New password", exact=True).fill("tiny")
    page.get_by_label("New password confirmation").fill("tiny")
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("alert")).to_contain_text("too short")
    expect(page.get_by_label("New password confirmation")).to_have_attribute("aria-invalid", "true")
    shoot(page, "17-password-refused")

    page.get_by_label("Old password").fill(PASSWORD)
    page.get_by_label("New password", exact=True).fill("a new and rather long passphrase")
    page.get_by_label("New password confirmation").fill("a new and rather long passphrase")
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("status")).to_contain_text("Your password is changed")
    shoot(page, "17-password-changed")

    page.goto("/models/")  # still logged in here
    expect(page.get_by_role("heading", name="Models", level=1)).to_be_visible()
    page.get_by_role("button", name="Log out").click()
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("a new and rather long passphrase")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Models", level=1)).to_be_visible()


def test_the_audit_log_lists_changes_and_refusals_and_filters_them(page: Page, alice_with_models, admin):
    log_in(page, alice_with_models)
    page.goto("/tokens/")
    page.get_by_label("Token name").fill("laptop")
    page.get_by_role("button", name="Create token").click()
    page.goto("/models/")
    page.get_by_label("Name").fill("iris")
    page.get_by_role("button", name="Create model").click()  # refused: it exists

    page.goto("/audit/")
    assert_styled(page)
    rows = page.locator("table.audit tbody tr")
    expect(rows).to_have_count(6)
    expect(rows.first).to_contain_text("model.create")
    expect(rows.first.locator(".badge")).to_have_text("invalid")
    expect(rows.nth(1)).to_contain_text("token.create")
    expect(rows.nth(2)).to_contain_text("login")
    expect(rows.nth(3).locator("ul.diff")).to_contain_text('+ name: "customer-churn-propensity')  # key by key
    page.get_by_role("button", name="Verify the hash chain").click()
    expect(page.get_by_role("status")).to_contain_text("Chain intact. 6 events checked")
    shoot(page, "17-audit")

    page.get_by_label("Search").fill("laptop")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    with page.expect_download() as download:
        page.get_by_role("link", name="CSV").click()
    assert download.value.suggested_filename.endswith(".csv")
    exported = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert [row["action"] for row in exported] == ["token.create"] and "laptop" in exported[0]["target_repr"]
    page.get_by_role("button", name="Clear").click()

    page.get_by_label("Action").fill("token.")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("laptop")
    expect(page.get_by_label("Action")).to_have_value("token.")
    shoot(page, "18-audit-filtered")

    page.get_by_role("button", name="Clear").click()
    page.get_by_label("Actor").fill("nobody-at-all")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("No events match")).to_be_visible()
    page.get_by_role("button", name="Clear").click()
    page.get_by_label("From (UTC)").fill((timezone.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"))
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("No events match")).to_be_visible()
    shoot(page, "19-audit-empty")


def test_the_api_docs_load_without_the_internet(page: Page, alice, live_db):
    log_in(page, alice)
    page.goto("/api/docs/")
    expect(page.get_by_text("Slipway API")).to_be_visible()
    expect(page.get_by_text("/api/v1/models/{model_name}/versions/").first).to_be_visible()
    shoot(page, "20-api-docs")
    # The schema behind the docs parses and names the contract's paths.
    schema = page.request.get("/api/schema/?format=json")
    assert "/api/v1/models/{model_name}/versions/{version}/artifact/" in json.loads(schema.body())["paths"]


@pytest.mark.parametrize(
    "asset, content_type",
    [
        ("vendor/pico/pico.min.css", "text/css"),
        ("slipway/slipway.css", "text/css"),
        ("vendor/htmx/htmx.min.js", "text/javascript"),
        ("slipway/slipway.js", "text/javascript"),
        ("slipway/favicon.svg", "image/svg+xml"),
    ],
)
def test_the_app_itself_serves_the_pages_assets_as_gunicorn_runs_it(client, asset, content_type):
    # The live server above answers /static/ with its own handler; `make run` (gunicorn) relies on WhiteNoise.
    response = client.get(f"/static/{asset}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith(content_type)
    assert "max-age" in response["Cache-Control"]


PHONE_PAGES = ["/models/", "/models/iris/", "/tokens/", "/approvals/", "/audit/", "/environments/"]
PHONE_PAGES += ["/account/password/"]


@pytest.mark.parametrize("path", PHONE_PAGES)
def test_on_a_phone_no_page_scrolls_sideways(page: Page, alice_with_models, path):
    """Wide tables scroll in their own box; tabs and forms wrap. (A visually hidden table header once
    escaped its box and made the tokens page 912 px wide; the approvals tabs ran off the screen.)"""
    create_token(
        alice_with_models, "a-token-with-a-rather-long-name-for-a-narrow-screen", actor=Actor(user=alice_with_models)
    )
    page.set_viewport_size({"width": 390, "height": 844})
    log_in(page, alice_with_models)
    page.goto(path)
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390, f"{path} scrolls sideways on a phone ({width}px wide)"
    header = page.locator("header.site").bounding_box()["height"]
    assert header <= 130, f"the navigation takes {header:.0f} px of an 844 px screen"  # two rows: brand, links
    shoot(page, "phone" + path.replace("/", "-").rstrip("-"))
    page.locator("header.site").get_by_role("link", name="API tokens").click()  # the links row scrolls to it
    expect(page.get_by_role("heading", name="API tokens", level=1)).to_be_visible()


def test_the_first_tab_stop_skips_the_navigation_to_the_page(page: Page, alice_with_models):
    log_in(page, alice_with_models)
    page.goto("/models/")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    expect(skip).to_be_visible()
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")  # the next stop is in the page, not the navigation
    assert page.evaluate("() => document.activeElement.closest('main') !== null")
