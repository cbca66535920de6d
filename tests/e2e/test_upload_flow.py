"""Issue 2 in a real browser: create a model, upload, watch validation live, download."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from playwright.sync_api import Page, expect

from controlplane.audit import Actor
from registry import services
from tests.e2e.conftest import log_in, shoot, watch_polls
from tests.models_zoo import MLP_SIGNATURE

pytestmark = pytest.mark.e2e

VALIDATION_TIMEOUT_MS = 90_000


def version_row(page: Page, version: int):
    return page.locator("#versions tbody tr", has=page.get_by_role("link", name=f"v{version}", exact=True))


def stay_on_this_page(page: Page) -> list[str]:
    """Mark the window and record navigations: a reload would lose the mark and add a navigation."""
    page.evaluate("window.slipwayMark = 'not reloaded'")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: frame == page.main_frame and navigations.append(frame.url))
    return navigations


@pytest.mark.worker
@pytest.mark.slow
def test_a_user_uploads_a_model_sees_it_become_ready_without_a_reload_and_downloads_it(
    page: Page, alice, worker, model_files
):
    log_in(page, alice)
    expect(page.get_by_text("No models yet")).to_be_visible()

    page.get_by_label("Name").fill("iris-classifier")
    page.get_by_label("Description").fill("Predicts the species of an iris from four measurements.")
    page.get_by_role("button", name="Create model").click()
    expect(page).to_have_url(re.compile(r"/models/iris-classifier/$"))
    expect(page.get_by_role("heading", name="iris-classifier", level=1)).to_be_visible()
    expect(page.get_by_text("No versions yet")).to_be_visible()

    navigations = stay_on_this_page(page)
    polls = watch_polls(page, "/versions/rows/")
    artifact = model_files["torchscript"].read_bytes()
    page.locator("#artifact-input").set_input_files(model_files["torchscript"])
    expect(page.locator("#dropzone")).to_contain_text("mlp.pt")
    page.get_by_label("Input signature").fill(json.dumps(MLP_SIGNATURE))
    shoot(page, "21-upload-chosen")
    page.get_by_role("button", name="Upload").click()

    result = page.locator("#upload-result")
    expect(result).to_contain_text(hashlib.sha256(artifact).hexdigest())
    expect(result).to_contain_text("iris-classifier v1")
    progress = page.locator("#upload-progress")
    expect(progress).to_be_visible()
    expect(progress).to_have_js_property("value", 100)

    row = version_row(page, 1)
    expect(row.locator(".badge")).to_have_text(re.compile("pending|validating|ready"))
    expect(row.locator(".badge")).to_have_text("ready", timeout=VALIDATION_TIMEOUT_MS)
    assert page.evaluate("window.slipwayMark") == "not reloaded"
    assert navigations == []
    shoot(page, "22-upload-ready")

    # Once every version is settled the table answers 286 and htmx stops asking.
    assert polls and polls[-1] == 286, polls
    asked = len(polls)
    page.wait_for_timeout(2500)
    assert len(polls) == asked, f"the versions table kept polling after it settled: {polls}"

    row.get_by_role("link", name="v1", exact=True).click()
    expect(page.get_by_role("heading", name="iris-classifier v1")).to_be_visible()
    facts = page.locator("#version-facts")
    expect(facts).to_contain_text(hashlib.sha256(artifact).hexdigest())
    expect(facts).to_contain_text(str(4 * 8 + 8 + 8 * 3 + 3))  # the MLP's parameters, as measured
    expect(facts).to_contain_text("output__0")
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download artifact").click()
    download = download_info.value
    assert download.suggested_filename == "mlp.pt"
    with open(download.path(), "rb") as fh:
        assert fh.read() == artifact


@pytest.mark.worker
@pytest.mark.slow
def test_a_file_dropped_on_the_drop_zone_is_uploaded_and_validated(page: Page, alice, worker, model_files):
    services.create_model("iris-export", actor=Actor(user=alice))
    log_in(page, alice)
    page.goto("/models/iris-export/")

    drop = page.locator("#dropzone")
    transfer = page.evaluate_handle(
        """([name, bytes]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name));
            return transfer;
        }""",
        ["mlp.pt2", list(model_files["pt2"].read_bytes())],
    )
    drop.dispatch_event("dragenter", {"dataTransfer": transfer})
    expect(drop).to_have_class(re.compile(r"\bdragover\b"))
    drop.dispatch_event("drop", {"dataTransfer": transfer})
    expect(drop).not_to_have_class(re.compile(r"\bdragover\b"))
    expect(drop).to_contain_text("mlp.pt2")

    # A .pt2 archive carries its own signature: nothing else to fill in.
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-result")).to_contain_text(hashlib.sha256(model_files["pt2"].read_bytes()).hexdigest())
    expect(version_row(page, 1).locator(".badge")).to_have_text("ready", timeout=VALIDATION_TIMEOUT_MS)
    expect(version_row(page, 1)).to_contain_text("torch.export")


@pytest.mark.worker
@pytest.mark.slow
def test_a_signature_the_model_does_not_accept_shows_the_rejection_reason_live(page: Page, alice, worker, model_files):
    services.create_model("iris", actor=Actor(user=alice))
    log_in(page, alice)
    page.goto("/models/iris/")
    navigations = stay_on_this_page(page)

    page.locator("#artifact-input").set_input_files(model_files["torchscript"])
    wrong = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 5]}]}
    page.get_by_label("Input signature").fill(json.dumps(wrong))
    page.get_by_role("button", name="Upload").click()

    row = version_row(page, 1)
    expect(row.locator(".badge")).to_have_text("rejected", timeout=VALIDATION_TIMEOUT_MS)
    expect(row).to_contain_text("does not accept its signature")
    shoot(page, "23-upload-rejected")
    assert page.evaluate("window.slipwayMark") == "not reloaded"
    assert navigations == []

    row.get_by_role("link", name="v1", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("[-1, 5]")


def test_a_pickle_is_refused_with_a_message_in_the_page_and_no_version(page: Page, alice, live_db, model_files):
    services.create_model("iris", actor=Actor(user=alice))
    log_in(page, alice)
    page.goto("/models/iris/")

    page.locator("#artifact-input").set_input_files(model_files["whole_pickle"])
    page.get_by_label("Input signature").fill(json.dumps(MLP_SIGNATURE))
    page.get_by_role("button", name="Upload").click()

    error = page.locator("#upload-result").get_by_role("alert")
    expect(error).to_contain_text(re.compile(r"pickled .* Slipway refuses it"))
    expect(error).to_contain_text("torch.jit.save")  # says how to export it properly
    expect(page.get_by_text("No versions yet")).to_be_visible()
    shoot(page, "24-upload-refused")


def test_a_file_over_the_size_limit_is_refused_with_a_message_in_the_page(
    page: Page, alice, live_db, settings, tmp_path
):
    settings.SLIPWAY_MAX_ARTIFACT_BYTES = 100_000  # the live server runs in this process, so it sees this
    big = tmp_path / "big.pt"
    big.write_bytes(b"\0" * 2_000_000)
    services.create_model("iris", actor=Actor(user=alice))
    log_in(page, alice)
    page.goto("/models/iris/")

    page.locator("#artifact-input").set_input_files(big)
    page.get_by_role("button", name="Upload").click()

    error = page.locator("#upload-result").get_by_role("alert")
    expect(error).to_contain_text("larger than the limit of 100000 bytes")
    expect(error).to_contain_text("SLIPWAY_MAX_ARTIFACT_BYTES")
    expect(page.get_by_text("No versions yet")).to_be_visible()
