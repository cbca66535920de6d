"""Issue 4 in a real browser: ask for an image build and watch its log stream in."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from playwright.sync_api import Page, expect
from rest_framework.test import APIClient

from registry.models import ModelVersion
from tests.conftest import wait_for
from tests.e2e.conftest import log_in, shoot
from tests.models_zoo import MLP_SIGNATURE

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.worker, pytest.mark.slow]


def test_a_build_log_streams_into_the_page_until_the_image_is_pushed(
    page: Page, alice, api: APIClient, worker, model_files
):
    name = f"iris-{uuid.uuid4().hex[:8]}"  # its own tag, so the registry cannot answer from cache
    api.post("/api/v1/models/", {"name": name}, format="json")
    with open(model_files["torchscript"], "rb") as fh:
        api.post(
            f"/api/v1/models/{name}/versions/",
            {"artifact": fh, "signature": json.dumps(MLP_SIGNATURE)},
            format="multipart",
        )
    wait_for(lambda: ModelVersion.objects.filter(model__name=name, status="ready").exists(), timeout=90)

    log_in(page, alice)
    page.goto(f"/models/{name}/versions/1/")
    page.get_by_label("Variant").select_option("cpu")
    page.get_by_role("button", name="Build image").click()
    expect(page).to_have_url(re.compile(r"/builds/\d+/$"))
    page.evaluate("window.slipwayMark = 'not reloaded'")

    log = page.locator("#build-log")
    expect(log).to_contain_text("Step 1/", timeout=60_000)  # written while the build runs
    shoot(page, "30-build-running")
    badge = page.locator("#build-panel .badge")
    expect(badge).to_have_text("succeeded", timeout=300_000)
    expect(log).to_contain_text("Pushed")
    expect(page.locator("#build-panel")).to_contain_text("sha256:")
    assert page.evaluate("window.slipwayMark") == "not reloaded"
    shoot(page, "31-build-succeeded")

    # The version page lists the build with its image.
    page.goto(f"/models/{name}/versions/1/")
    expect(page.locator("#builds")).to_contain_text(f"/slipway/{name}:v1-")
