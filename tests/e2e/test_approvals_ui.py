"""Issue 6 in a real browser: a deploy into a protected environment waits for two approvers.

Bob (a deployer) asks; Carol and Dave (approvers) decide on the Approvals page. The
rollouts are leased so that no worker running for other tests moves them: what is
checked here is the approval, not the rollout that follows it.

Run with SLIPWAY_E2E_SHOTS=/tmp to keep screenshots of the pages.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from controlplane.audit import Actor
from controlplane.models import AuditEvent, Role
from controlplane.roles import grant_role
from deployments import services
from deployments.models import ApprovalRequest, Release, Rollout
from registry.models import Model
from tests.e2e.conftest import log_in, shoot
from tests.factories import UserFactory, bulk_versions

pytestmark = pytest.mark.e2e

HELD = "e2e test: no worker may advance this rollout"


@pytest.fixture
def prod(alice, live_db):
    """A protected environment, iris v1 and v2 in the registry, and Bob's request to deploy v2."""
    actor = Actor(user=alice)
    environment = services.create_environment("prod", actor=actor, required_approvals=2)
    model = Model.objects.create(name="iris", created_by=alice)
    bulk_versions(model, 2, uploaded_by=alice)
    people = {name: UserFactory(username=name) for name in ("bob", "carol", "dave")}
    grant_role(environment, Role.DEPLOYER, actor=actor, user="bob")
    grant_role(environment, Role.APPROVER, actor=actor, user="carol")
    grant_role(environment, Role.APPROVER, actor=actor, user="dave")
    deployment, rollout, _ = services.deploy(
        "iris", "prod", 2, actor=Actor(user=people["bob"]), reason="fixes the setosa confusion"
    )
    Rollout.objects.filter(pk=rollout.pk).update(lease_owner=HELD, lease_expires_at=timezone.now() + timedelta(hours=1))
    return {"deployment": deployment, "rollout": rollout, "request": ApprovalRequest.objects.get(rollout=rollout)}


def log_out(page: Page) -> None:
    page.get_by_role("button", name="Log out").click()


def test_two_approvers_other_than_the_requester_start_the_rollout(page: Page, prod):
    request, deployment = prod["request"], prod["deployment"]
    bob, carol, dave = (UserFactory(username=name) for name in ("bob", "carol", "dave"))

    # Bob sees his rollout waiting, and may not approve it himself.
    log_in(page, bob)
    page.goto(f"/deployments/{deployment.pk}/")
    expect(page.locator("#rollout-state .badge")).to_have_text("awaiting approval")
    expect(page.locator("#approval-banner")).to_contain_text("Waiting for approval: 0 of 2")
    page.locator("#approval-banner").get_by_role("link", name=f"Review request #{request.pk}").click()
    expect(page.locator("#cannot-decide")).to_contain_text("You asked for this rollout")
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    log_out(page)

    # Carol finds it from the navigation, reads what changes, approves: 1 of 2.
    log_in(page, carol)
    expect(page.locator("#nav-approvals .nav-count")).to_have_text("1")
    page.locator("#nav-approvals").click()
    row = page.locator("table.approvals tbody tr").first
    expect(row).to_contain_text("iris v2")
    expect(row).to_contain_text("bob")
    expect(row).to_contain_text("0 of 2")
    row.get_by_role("link", name=f"#{request.pk}").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("iris v2 → prod")
    expect(page.locator("#approval-summary")).to_contain_text("fixes the setosa confusion")
    expect(page.locator("table.change")).to_contain_text(request.change["sha256"])
    shoot(page, "approval-pending")
    page.get_by_label("Comment").fill("Metrics look good.")
    page.get_by_role("button", name="Approve").click()
    expect(page.locator("#approval-summary")).to_contain_text("1 of 2")
    expect(page.locator("#decisions")).to_contain_text("carol approved")
    expect(page.locator("#decisions")).to_contain_text("Metrics look good.")
    expect(page.locator("#cannot-decide")).to_contain_text("You have decided")
    expect(page.locator("#nav-approvals .nav-count")).to_have_count(0)
    log_out(page)

    # Dave's approval is the second: the request is approved and the rollout leaves the queue.
    log_in(page, dave)
    page.goto(f"/approvals/{request.pk}/")
    page.get_by_role("button", name="Approve").click()
    expect(page.locator("#approval-state .badge")).to_have_text("approved")
    shoot(page, "approval-approved")
    rollout = Rollout.objects.get(pk=prod["rollout"].pk)
    assert rollout.state != "awaiting_approval"
    assert Release.objects.get(pk=rollout.release_id).approved_by == ["carol", "dave"]
    page.goto(f"/deployments/{deployment.pk}/history/")
    expect(page.locator("table.history tbody tr").first).to_contain_text("carol, dave")
    actions = list(
        AuditEvent.objects.filter(action__startswith="approval.").order_by("id").values_list("action", "actor")
    )
    assert actions == [
        ("approval.request", "bob"),
        ("approval.approve", "carol"),
        ("approval.approve", "dave"),
        ("approval.granted", "dave"),
    ]


def test_a_rejection_needs_a_reason_and_ends_the_rollout(page: Page, prod):
    request, deployment = prod["request"], prod["deployment"]
    log_in(page, UserFactory(username="carol"))
    page.goto(f"/approvals/{request.pk}/")
    page.get_by_role("button", name="Reject").click()
    expect(page.locator("#decision-error")).to_contain_text("Say why you reject it")
    page.get_by_label("Comment").fill("Not during the freeze.")
    page.get_by_role("button", name="Reject").click()
    expect(page.locator("#approval-state .badge")).to_have_text("rejected")
    expect(page.locator("#approval-summary")).to_contain_text("the rollout was aborted")
    page.goto(f"/deployments/{deployment.pk}/")
    expect(page.locator("#rollout-state .badge")).to_have_text("aborted")
    expect(page.locator(".failure")).to_contain_text("Rejected by carol: Not during the freeze.")
    shoot(page, "approval-rejected")
    page.goto("/approvals/?state=rejected")
    expect(page.locator("table.approvals tbody tr").first).to_contain_text("rejected")
    assert AuditEvent.objects.filter(action="approval.reject", actor="carol", message="Not during the freeze.").exists()


def test_an_environment_admin_grants_and_revokes_roles_and_protects_it(page: Page, alice, live_db):
    environment = services.create_environment("staging", actor=Actor(user=alice))
    UserFactory(username="erin")
    log_in(page, alice)
    page.goto("/environments/staging/")
    expect(page.locator("#protection-summary")).to_contain_text("Unprotected")
    expect(page.locator("#your-role")).to_have_text("admin")

    access = page.locator("#access")
    access.get_by_label("Grant").select_option("deployer")
    access.get_by_label("named").fill("nobody")
    access.get_by_role("button", name="Grant").click()
    expect(page.locator("#access .error")).to_contain_text("There is no user 'nobody'")
    access.get_by_label("named").fill("erin")
    access.get_by_role("button", name="Grant").click()
    row = page.locator("table.bindings tbody tr", has_text="erin")
    expect(row).to_contain_text("deployer")

    protection = page.locator("#protection")
    protection.get_by_label("Approvals needed").fill("2")
    protection.get_by_label("Requests expire after (hours)").fill("4")
    protection.get_by_role("button", name="Save protection").click()
    expect(page.locator("#protection-summary")).to_contain_text("2 approvals")
    expect(page.locator("#protection-summary")).to_contain_text("after 4 h")
    shoot(page, "environment-access")

    row.get_by_role("button", name="Revoke deployer from erin").click()
    expect(page.locator("table.bindings tbody tr", has_text="erin")).to_have_count(0)
    environment.refresh_from_db()
    assert (environment.required_approvals, environment.approval_timeout_s) == (2, 4 * 3600)
    actions = AuditEvent.objects.filter(environment="staging").order_by("id").values_list("action", "outcome")
    assert [a for a in actions if a[0] != "environment.create"] == [
        ("role.grant", "invalid"),
        ("role.grant", "success"),
        ("environment.update", "success"),
        ("role.revoke", "success"),
    ]
