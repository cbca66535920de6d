"""The deployment pages without a worker: what they show, what they refuse, what they record.

Rollouts are started through the services; where a test needs a rollout further
along, it moves the row as the worker would (the reconciler has its own tests).
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from controlplane.audit import Actor
from controlplane.models import AuditEvent, Role, RoleBinding
from deployments import engine, forms, services
from deployments.models import Deployment, Environment, Release, Rollout, RolloutEvent, RolloutState
from registry.models import Model
from tests.factories import UserFactory, bulk_versions

pytestmark = pytest.mark.django_db

FAST_POLL = 'hx-trigger="every 500ms"'
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def browser(alice) -> Client:
    """Alice's browser: logged in, and refused like a real one when a post lacks the CSRF token."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    client.get("/environments/")  # sets the CSRF cookie, as any page view does
    return client


def post(client: Client, url: str, data: dict | None = None, *, htmx: bool = False):
    headers = {"HTTP_X_CSRFTOKEN": client.cookies["csrftoken"].value, **(HTMX if htmx else {})}
    return client.post(url, data or {}, **headers)


@pytest.fixture
def actor(alice) -> Actor:
    return Actor(user=alice)


@pytest.fixture
def iris(alice):
    model = Model.objects.create(name="iris", created_by=alice)
    bulk_versions(model, 3, uploaded_by=alice)
    return model


@pytest.fixture
def dev(actor) -> Environment:
    return services.create_environment("dev", actor=actor)


@pytest.fixture
def staging(actor, dev) -> Environment:
    return services.create_environment("staging", actor=actor, promotes_from="dev")


def start(actor, version: int = 1, environment: str = "dev", **kwargs) -> Rollout:
    return services.deploy("iris", environment, version, actor=actor, **kwargs)[1]


def settle(rollout: Rollout, state: str = RolloutState.SUCCEEDED, **fields) -> Rollout:
    """Move a rollout to where the worker would have left it."""
    now = timezone.now()
    Rollout.objects.filter(pk=rollout.pk).update(
        state=state,
        finished_at=now if state in ("succeeded", "failed", "aborted", "rolled_back") else None,
        weight=100 if state == "succeeded" else 0,
        step_index=len(rollout.steps) if state == "succeeded" else 0,
        revision=rollout.revision + 1,
        **fields,
    )
    if state == RolloutState.SUCCEEDED:
        Deployment.objects.filter(pk=rollout.deployment_id).update(
            current_release=rollout.release, endpoint="http://127.0.0.1:18080"
        )
    rollout.refresh_from_db()
    return rollout


def status_of(*releases: int) -> dict:
    """rollout.status as engine.status_snapshot writes it, for these release numbers."""
    return {
        "endpoint": "http://127.0.0.1:18080",
        "weights": {str(n): 100 // len(releases) for n in releases},
        "releases": {
            str(n): {
                "desired": 2,
                "updated": 2,
                "ready": 1,
                "available": 1,
                "done": False,
                "failed": None,
                "message": "1 of 2 updated replicas are available",
                "warnings": ["replica 1: CrashLoopBackOff"] if n == releases[-1] else [],
            }
            for n in releases
        },
    }


# --- Every page, for people who are logged in and for those who are not ----------------------
def test_every_page_renders_for_a_logged_in_person(browser, iris, staging, actor):
    rollout = start(actor, reason="first light")
    deployment = rollout.deployment
    pages = {
        "/environments/": ["dev", "staging", "Create environment"],
        "/deployments/": ["iris", "pending"],
        "/deployments/?environment=dev": ["iris"],
        f"/deployments/{deployment.pk}/": ["iris", "Rollout #", "Waiting for a worker", "first light"],
        f"/deployments/{deployment.pk}/history/": ["first light", "deploy", "v1"],
        "/models/iris/versions/2/": ["Deploy v2", '<option value="staging"'],
    }
    for url, texts in pages.items():
        response = browser.get(url)
        assert response.status_code == 200, url
        for text in texts:
            assert text in response.content.decode(), (url, text)
    nav = browser.get("/deployments/").content.decode()
    assert re.search(r'href="/deployments/" aria-current="page">Deployments', nav)
    assert 'href="/environments/"' in nav


def test_people_who_are_not_logged_in_are_sent_to_log_in(client, iris, dev, actor):
    rollout = start(actor)
    pk = rollout.deployment_id
    for url in [
        "/environments/",
        "/deployments/",
        f"/deployments/{pk}/",
        f"/deployments/{pk}/live/",
        f"/deployments/{pk}/watch/",
        f"/deployments/{pk}/history/",
    ]:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/"), url
    for url in [
        "/environments/",
        "/models/iris/versions/2/deploy/",
        f"/deployments/{pk}/promote/",
        f"/deployments/{pk}/rollback/",
        f"/deployments/{pk}/unpin/",
        f"/rollouts/{rollout.pk}/abort/",
    ]:
        response = client.post(url, {"name": "prod", "environment": "dev", "reason": "x"})
        assert response.status_code == 302 and response["Location"].startswith("/login/"), url
    assert Rollout.objects.get().state == "pending"
    assert Release.objects.count() == 1 and Environment.objects.count() == 1


def test_a_version_that_is_not_ready_offers_no_deploy_form(browser, alice, dev):
    model = Model.objects.create(name="iris", created_by=alice)
    bulk_versions(model, 1, uploaded_by=alice, status="validating")
    page = browser.get("/models/iris/versions/1/").content.decode()
    assert '<section id="deploy">' in page  # the placeholder the settled version's refresh fills
    assert "Deploy v1" not in page
    response = post(browser, "/models/iris/versions/1/deploy/", {"environment": "dev"})  # a hand-made post
    assert response.status_code == 409
    assert "only a ready version can be deployed" in response.content.decode()


def test_without_environments_the_version_page_says_where_to_create_one(browser, iris):
    page = browser.get("/models/iris/versions/1/").content.decode()
    assert "No environment to deploy to yet" in page and 'href="/environments/"' in page


def test_a_viewer_is_told_deploying_needs_a_role_and_is_offered_no_unpin(browser, iris, dev, actor):
    pk = settle(start(actor, version=1)).deployment_id
    Deployment.objects.filter(pk=pk).update(pinned=True, pinned_reason="rolled back to release 1: drift")
    vera = UserFactory(username="vera")
    RoleBinding.objects.create(user=vera, role=Role.VIEWER, environment=dev)
    viewer = Client()
    viewer.force_login(vera)

    page = viewer.get("/models/iris/versions/1/").content.decode()
    assert "Deploy v1" not in page and "No environment to deploy to yet" not in page
    assert "Deploying needs the deployer role in an environment" in page
    page = viewer.get(f"/deployments/{pk}/").content.decode()
    assert "Pinned" in page and "someone with the deployer role in dev unpins it" in page
    assert "/unpin/" not in page
    assert "/unpin/" in browser.get(f"/deployments/{pk}/").content.decode()  # alice may unpin


# --- Environments ---------------------------------------------------------------------
def test_an_environment_is_created_from_the_form_and_audited(browser, dev):
    response = post(
        browser,
        "/environments/",
        {
            "name": "staging",
            "target": "local",
            "promotes_from": "dev",
            "description": "for QA",
            "namespace": "ignored-for-local",
            "default_plan": '{"strategy": "canary", "steps": [{"set_weight": 20}, {"pause": {"duration": "1m"}}]}',
        },
    )
    assert response.status_code == 302 and response["Location"] == "/environments/"
    staging = Environment.objects.get(name="staging")
    assert staging.promotes_from == dev and staging.target_config == {}
    assert staging.default_plan["strategy"] == "canary"
    assert AuditEvent.objects.filter(action="environment.create", target_repr="staging").exists()
    page = browser.get("/environments/").content.decode()
    assert re.search(r"staging.*?local processes.*?dev.*?canary", page, re.S)


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        ({"name": "Prod!"}, 400, "Environment name 'Prod!' is not allowed"),
        ({"name": "dev"}, 409, "An environment named 'dev' already exists"),
        ({"name": "prod", "promotes_from": "nowhere"}, 400, "no environment 'nowhere'"),
        ({"name": "prod", "default_plan": "{strategy: canary}"}, 400, "The default plan is not valid JSON"),
        ({"name": "prod", "default_plan": "[1, 2]"}, 400, "must be a JSON object"),
        ({"name": "prod", "default_plan": '{"strategy": "yolo"}'}, 400, "'yolo': use one of rolling, canary"),
    ],
)
def test_a_refused_environment_is_explained_next_to_the_form_and_audited(browser, dev, data, status, message):
    response = post(browser, "/environments/", {"target": "local", **data})
    assert response.status_code == status
    page = response.content.decode()
    assert message in page.replace("&#x27;", "'")
    assert f'value="{data["name"]}"' in page  # what was typed stays in the form
    refused = AuditEvent.objects.get(action="environment.create", outcome="invalid")
    assert message in refused.message
    assert Environment.objects.count() == 1


def test_a_refusal_marks_the_field_it_is_about_and_no_other(browser, iris, dev):
    page = post(browser, "/environments/", {"name": "staging", "default_plan": "{oops"}).content.decode()
    assert "The default plan is not valid JSON" in page
    assert re.search(r'<textarea name="default_plan"[^>]*aria-invalid="true"', page)
    assert not re.search(r'<input name="name"[^>]*aria-invalid', page)

    page = post(browser, "/models/iris/versions/1/deploy/", {"environment": "dev", "plan": '{"steps": 5}'}).content
    page = page.decode()
    assert re.search(r'<textarea name="plan"[^>]*aria-invalid="true"', page, re.S)
    assert not re.search(r'<select name="environment"[^>]*aria-invalid', page)


def test_a_kubernetes_environment_is_created_from_the_form_fields(browser):
    fields = {"name": "prod", "target": "kubernetes", "kubeconfig": "/etc/slipway/kubeconfig", "context": "eu-west"}
    response = post(browser, "/environments/", fields)
    assert response.status_code == 400  # no namespace
    assert "namespace: required" in response.content.decode()
    assert 'value="/etc/slipway/kubeconfig"' in response.content.decode()

    response = post(browser, "/environments/", {**fields, "namespace": "ml-prod", "ingress_host": "models.example.com"})
    assert response.status_code == 302
    config = Environment.objects.get(name="prod").target_config
    assert config["namespace"] == "ml-prod" and config["context"] == "eu-west" and config["in_cluster"] is False
    assert config["ingress_host"] == "models.example.com"
    page = browser.get("/environments/").content.decode()
    assert "namespace <code>ml-prod</code> · context <code>eu-west</code>" in page


def test_kubernetes_fields_become_the_target_config_only_for_kubernetes():
    fields = {
        "name": "prod",
        "namespace": " ml-prod ",
        "kubeconfig": "/etc/slipway/kubeconfig",
        "context": "",
        "image_pull_secret": "regcred",
        "ingress_host": "models.example.com",
    }
    kubernetes = forms.environment_args(_form(target="kubernetes", **fields))
    assert kubernetes["target_config"] == {
        "namespace": "ml-prod",
        "kubeconfig": "/etc/slipway/kubeconfig",
        "image_pull_secret": "regcred",
        "ingress_host": "models.example.com",
    }
    assert forms.environment_args(_form(target="kubernetes", namespace="ml", in_cluster="on"))["target_config"] == {
        "namespace": "ml",
        "in_cluster": True,
    }
    assert forms.environment_args(_form(target="local", **fields))["target_config"] == {}


def _form(**values):
    from django.http import QueryDict

    data = QueryDict(mutable=True)
    data.update(values)
    return data


# --- Deploying from a version's page -------------------------------------------------------
def test_the_deploy_form_starts_a_rollout_and_goes_to_the_deployment(browser, iris, dev):
    response = post(
        browser,
        "/models/iris/versions/2/deploy/",
        {
            "environment": "dev",
            "strategy": "canary",
            "plan": '{"steps": [{"set_weight": 20}, {"pause": {}}]}',
            "replicas": "2",
            "max_batch_size": "32",
            "memory_limit": "1Gi",
            "reason": "better recall",
        },
    )
    deployment = Deployment.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/deployments/{deployment.pk}/"
    rollout = Rollout.objects.get()
    assert rollout.plan["strategy"] == "canary" and rollout.plan["steps"] == [{"set_weight": 20}, {"pause": {}}]
    release = rollout.release
    assert release.model_version.version == 2 and release.reason == "better recall"
    assert release.settings["replicas"] == 2 and release.settings["max_batch_size"] == 32
    assert release.settings["memory_limit"] == "1Gi"
    event = AuditEvent.objects.get(action="deployment.deploy", outcome="success")
    assert event.actor == "alice" and event.after["version"] == 2


def test_a_deploy_without_a_plan_uses_the_environments_default(browser, iris, actor):
    services.create_environment(
        "dev", actor=actor, default_plan={"strategy": "blue_green", "keep_old": "1m", "auto_switch": True}
    )
    assert post(browser, "/models/iris/versions/1/deploy/", {"environment": "dev"}).status_code == 302
    assert Rollout.objects.get().plan["strategy"] == "blue_green"


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        ({"environment": ""}, 400, "Choose the environment to deploy to"),
        ({"environment": "nowhere"}, 404, "There is no environment 'nowhere'"),
        ({"plan": "{steps: []}"}, 400, "The plan is not valid JSON"),
        ({"strategy": "canary", "plan": '{"steps": [{"set_weight": 500}]}'}, 400, "set_weight must be a whole percent"),
        ({"strategy": "rolling", "plan": '{"strategy": "canary"}'}, 400, "disagree"),
        ({"strategy": "canary"}, 400, "a canary needs steps"),
        ({"replicas": "two"}, 400, "replicas: 'two' is not a whole number"),
        ({"replicas": "0"}, 400, "must be a whole number from 1 to 100"),
        ({"cpu_request": "lots"}, 400, "is not a CPU amount"),
    ],
)
def test_a_refused_deploy_shows_the_services_message_and_is_audited(browser, iris, dev, data, status, message):
    response = post(browser, "/models/iris/versions/1/deploy/", {"environment": "dev", **data})
    assert response.status_code == status
    page = response.content.decode().replace("&#x27;", "'").replace("&quot;", '"')
    assert message in page
    assert 'role="alert"' in page and "Deploy v1" in page  # the form again, with the reason next to it
    refused = AuditEvent.objects.get(action="deployment.deploy")
    assert refused.outcome == "invalid" and message in refused.message.replace("&#x27;", "'")
    assert not Rollout.objects.exists() and not Deployment.objects.exists()


def test_a_second_deploy_while_a_rollout_is_active_is_refused_409(browser, iris, dev, actor):
    first = start(actor)
    response = post(browser, "/models/iris/versions/2/deploy/", {"environment": "dev", "reason": "again"})
    assert response.status_code == 409
    assert f"Rollout #{first.pk} of iris in dev is pending: wait for it to end, or abort it first." in (
        response.content.decode()
    )
    assert 'value="again"' in response.content.decode()
    assert AuditEvent.objects.filter(action="deployment.deploy", outcome="invalid").count() == 1
    assert Rollout.objects.count() == 1


# --- The deployment page and its live panel ----------------------------------------------
def test_the_live_panel_polls_while_a_rollout_is_active_and_stops_with_286(browser, iris, dev, actor):
    rollout = start(actor)
    url = f"/deployments/{rollout.deployment_id}/live/"
    response = browser.get(url, **HTMX)
    assert response.status_code == 200 and FAST_POLL in response.content.decode()
    assert 'data-state="pending"' in response.content.decode()

    settle(rollout)
    response = browser.get(url, **HTMX)
    assert response.status_code == 286
    page = response.content.decode()
    assert FAST_POLL not in page and 'data-state="succeeded"' in page
    # Idle, it keeps a slow, cheap watch for a rollout started elsewhere.
    assert f"/deployments/{rollout.deployment_id}/watch/?stamp=" in page and 'hx-trigger="every 2s"' in page


def test_the_watch_answers_204_until_something_changes_then_the_panel(browser, iris, dev, actor):
    first = settle(start(actor))
    page = browser.get(f"/deployments/{first.deployment_id}/").content.decode()
    watch = re.search(r'hx-get="(/deployments/\d+/watch/\?stamp=[^"]+)"', page).group(1)
    assert browser.get(watch, **HTMX).status_code == 204

    second = start(Actor(user=first.requested_by), version=2)  # started elsewhere: the API, another tab
    response = browser.get(watch, **HTMX)
    assert response.status_code == 200
    assert FAST_POLL in response.content.decode() and f"Rollout #{second.pk}" in response.content.decode()

    settle(second)
    Deployment.objects.filter(pk=first.deployment_id).update(pinned=True, pinned_reason="by hand")
    page = browser.get(f"/deployments/{first.deployment_id}/live/", **HTMX).content.decode()
    watch = re.search(r'hx-get="(/deployments/\d+/watch/\?stamp=[^"]+)"', page).group(1)
    assert browser.get(watch, **HTMX).status_code == 204
    Deployment.objects.filter(pk=first.deployment_id).update(pinned=False, pinned_reason="")
    assert browser.get(watch, **HTMX).status_code == 200


def test_steps_a_promote_now_skipped_are_shown_skipped_not_done(browser, iris, dev, actor):
    settle(start(actor))
    plan = {"strategy": "canary", "steps": [{"set_weight": 25}, {"pause": {}}, {"set_weight": 50}]}
    rollout = start(actor, version=2, plan=plan)
    Rollout.objects.filter(pk=rollout.pk).update(state="paused", step_index=1, weight=25)
    services.promote_rollout_now(rollout, actor=actor)
    Rollout.objects.filter(pk=rollout.pk).update(state="succeeded", weight=100, finished_at=timezone.now())
    page = browser.get(f"/deployments/{rollout.deployment_id}/").content.decode()
    steps = re.findall(r'<li class="step-(\w+)"[^>]*>([^<]+)</li>', page)
    assert [where for where, _ in steps] == ["done", "skipped", "skipped", "done"], steps
    assert steps[-1][1] == "send 100% of traffic to the new release"


def test_the_panel_shows_steps_weight_replicas_warnings_analysis_and_events(browser, iris, dev, actor):
    settle(start(actor))
    rollout = start(
        actor, version=2, plan={"strategy": "canary", "steps": [{"set_weight": 25}, {"pause": {}}, {"set_weight": 50}]}
    )
    Rollout.objects.filter(pk=rollout.pk).update(
        state="paused",
        step_index=1,
        weight=25,
        pause_reason="The plan pauses here until someone resumes.",
        status=status_of(1, 2),
        analysis={
            "passed": False,
            "summary": "error rate 7.5% > 1%",
            "checks": [
                {
                    "name": "readiness",
                    "passed": True,
                    "measured": 2,
                    "threshold": 2,
                    "unit": "replicas",
                    "detail": "2 of 2 ready",
                },
                {
                    "name": "error_rate",
                    "passed": False,
                    "measured": 0.075,
                    "threshold": 0.01,
                    "unit": "ratio",
                    "detail": "error rate 7.5% > 1%",
                },
                {
                    "name": "latency_p95",
                    "passed": True,
                    "measured": 812.4,
                    "threshold": 1000,
                    "unit": "ms",
                    "detail": "p95 latency 812 ms <= 1000 ms",
                },
            ],
        },
    )
    RolloutEvent.objects.create(rollout=rollout, kind="warning", message="The target did not answer; trying again")
    page = browser.get(f"/deployments/{rollout.deployment_id}/").content.decode()
    assert "Step 2 of 4: pause until resumed" in page
    assert re.search(r'<li class="step-done"[^>]*>send 25% of traffic', page)
    assert re.search(r'<li class="step-current" aria-current="step">pause until resumed', page)
    assert '<progress value="25" max="100"' in page and "75% on release 1" in page
    assert "Release 2: replica 1: CrashLoopBackOff" in page  # the target's warnings, highlighted
    assert '<tr class="warn">' in page
    assert "1 of 2 updated replicas are available" in page
    assert "7.5%" in page and "1%" in page and "812 ms" in page and "error rate 7.5% &gt; 1%" in page
    assert "The target did not answer; trying again" in page and 'class="event-warning"' in page
    assert "The plan pauses here until someone resumes." in page
    # Paused: resume, promote now and abort are offered; pause is not.
    assert ">Resume</button>" in page and ">Promote now</button>" in page and ">Abort</button>" in page
    assert ">Pause</button>" not in page


def test_a_rollout_ending_while_the_panel_is_read_never_shows_it_ended_beside_the_old_release(
    browser, iris, dev, actor
):
    """The engine ends a rollout and moves the deployment to its release in one transaction; if that
    lands between the panel's reads, the page must not say "serving release 1" under an ended rollout
    (it would stop refreshing like that). Here it lands right after the panel's first query."""
    settle(start(actor, version=1))
    rollout = start(actor, version=2)
    Rollout.objects.filter(pk=rollout.pk).update(state="progressing", weight=100)
    ended = []

    def end_the_rollout_after_the_first_query(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if not ended and ("deployments_rollout" in sql or "deployments_deployment" in sql):
            ended.append(sql)
            Rollout.objects.filter(pk=rollout.pk).update(state="succeeded", finished_at=timezone.now())
            Deployment.objects.filter(pk=rollout.deployment_id).update(current_release=rollout.release)
        return result

    with connection.execute_wrapper(end_the_rollout_after_the_first_query):
        page = browser.get(f"/deployments/{rollout.deployment_id}/live/", **HTMX).content.decode()
    assert ended
    serving = re.search(r"Serving</th><td><strong>release (\d+)</strong>", page)[1]
    polling = FAST_POLL in page
    assert polling or serving == "2", "the rollout shows as ended while the page says release 1 serves"


def test_a_stopped_deployment_claims_no_release_kept_warm(browser, iris, dev, actor):
    """After stop_local_deployments nothing runs, the previous release included: a rollback starts it again."""
    first = settle(start(actor, version=1))
    second = settle(start(actor, version=2))
    deployment = Deployment.objects.get()
    Deployment.objects.update(warm_release=first.release, warm_until=timezone.now() + timedelta(minutes=10))
    assert "Kept warm</th>" in browser.get(f"/deployments/{deployment.pk}/").content.decode()
    Rollout.objects.filter(pk=second.pk).update(status={"endpoint": None, "weights": {}, "releases": {}})
    page = browser.get(f"/deployments/{deployment.pk}/").content.decode()
    assert "nothing of release 2 runs any more" in page
    assert "Kept warm</th>" not in page and "only re-routes" not in page


def test_a_rollback_onto_a_warm_release_is_shown_by_release_not_by_slot(browser, iris, dev, actor):
    first = settle(start(actor, version=1))
    settle(start(actor, version=2))
    deployment = Deployment.objects.get()
    Deployment.objects.update(warm_release=first.release, warm_until=timezone.now() + timedelta(minutes=10))
    page = browser.get(f"/deployments/{deployment.pk}/").content.decode()
    assert "Kept warm</th><td>release 1 · v1, up without traffic until" in page

    rollout = services.rollback(deployment, actor=actor, reason="v2 drifts", to_release=1)[1]
    assert (rollout.release.number, rollout.release.slot) == (3, 1)  # release 1's processes, taken over
    Rollout.objects.filter(pk=rollout.pk).update(state="progressing", status=status_of(2, 1))
    page = browser.get(f"/deployments/{deployment.pk}/").content.decode()
    rows = re.findall(r'<td class="nowrap">(\d+) <small class="muted">(\w+)</small>', page)
    assert rows == [("3", "new"), ("2", "previous")]
    assert "Release 3: replica 1: CrashLoopBackOff" in page  # status_of warns about its last slot: 1


def test_a_failed_rollout_says_why(browser, iris, dev, actor):
    rollout = start(actor)
    settle(rollout, "failed", failure_reason="Release 1 was not ready after 300 s: ImagePullBackOff")
    page = browser.get(f"/deployments/{rollout.deployment_id}/").content.decode()
    assert "Failed:</strong> Release 1 was not ready after 300 s: ImagePullBackOff" in page
    assert "nothing serves in this environment" in page
    assert "<button" not in page.split('id="rollout-state"')[1].split("Timeline")[0]  # no actions on a finished one


def test_the_live_panel_costs_the_same_queries_for_10_or_50_events_and_1_or_3_releases(
    browser, iris, dev, actor, django_assert_max_num_queries
):
    rollout = start(actor)
    url = f"/deployments/{rollout.deployment_id}/live/"

    def queries(events: int, releases: tuple[int, ...]) -> int:
        RolloutEvent.objects.filter(rollout=rollout).delete()
        RolloutEvent.objects.bulk_create(
            RolloutEvent(rollout=rollout, kind="info", message=f"e{n}") for n in range(events)
        )
        Rollout.objects.filter(pk=rollout.pk).update(state="progressing", status=status_of(*releases))
        with CaptureQueriesContext(connection) as captured:
            response = browser.get(url, **HTMX)
        assert response.status_code == 200
        assert f"e{events - 1}" in response.content.decode()
        return len(captured.captured_queries)

    small = queries(10, (1,))
    assert queries(50, (1,)) == small
    assert queries(50, (1, 2, 3)) == small
    with django_assert_max_num_queries(6):  # session, user, the user's roles, deployment, rollout, newest events
        browser.get(url, **HTMX)
    # Idle, with releases to roll back to and somewhere to promote to, it stays as cheap.
    settle(rollout)
    for version in (2, 3):
        settle(start(actor, version=version))
    services.create_environment("staging", actor=actor, promotes_from="dev")
    with django_assert_max_num_queries(8):  # and the next environments, the releases to roll back to
        response = browser.get(url, **HTMX)
    assert response.status_code == 286 and "Promote to staging" in response.content.decode()
    watch = re.search(r'hx-get="(/deployments/\d+/watch/\?stamp=[^"]+)"', response.content.decode()).group(1)
    with django_assert_max_num_queries(4):  # session, user, the user's roles, one row
        assert browser.get(watch, **HTMX).status_code == 204


# --- Actions on the rollout ---------------------------------------------------------------
def test_pausing_a_pending_rollout_is_refused_409_with_the_services_message_and_audited(browser, iris, dev, actor):
    rollout = start(actor)
    response = post(browser, f"/rollouts/{rollout.pk}/pause/", htmx=True)
    assert response.status_code == 409
    page = response.content.decode()
    assert f"rollout #{rollout.pk} of iris in dev is pending: only a progressing rollout can pause." in page
    assert 'id="action-message" hx-swap-oob="true"' in page and 'id="deployment-live"' in page
    refused = AuditEvent.objects.get(action="rollout.pause")
    assert refused.outcome == "invalid" and "409 POST" in refused.message
    assert Rollout.objects.get().state == "pending"


def test_the_action_buttons_call_the_services_and_re_render_the_panel(browser, iris, dev, actor):
    settle(start(actor))
    rollout = start(actor, version=2, plan={"strategy": "canary", "steps": [{"set_weight": 10}]})
    Rollout.objects.filter(pk=rollout.pk).update(state="progressing")

    response = post(browser, f"/rollouts/{rollout.pk}/pause/", htmx=True)
    assert response.status_code == 200
    assert 'data-state="paused"' in response.content.decode() and "Paused: traffic stays" in response.content.decode()
    assert FAST_POLL in response.content.decode()
    assert AuditEvent.objects.filter(action="rollout.pause", outcome="success").count() == 1

    response = post(browser, f"/rollouts/{rollout.pk}/resume/", htmx=True)
    assert 'data-state="progressing"' in response.content.decode()

    response = post(browser, f"/rollouts/{rollout.pk}/promote/", htmx=True)
    assert response.status_code == 200 and Rollout.objects.get(pk=rollout.pk).skip_steps

    response = post(browser, f"/rollouts/{rollout.pk}/abort/", htmx=True)
    assert 'data-state="reverting"' in response.content.decode()
    assert "Aborting: the previous release gets all traffic back" in response.content.decode()
    assert [e.action for e in AuditEvent.objects.filter(action__startswith="rollout.").order_by("id")] == [
        "rollout.pause",
        "rollout.resume",
        "rollout.promote",
        "rollout.abort",
    ]


def test_aborting_a_pending_rollout_ends_it_and_the_panel_stops_polling(browser, iris, dev, actor):
    rollout = start(actor)
    response = post(browser, f"/rollouts/{rollout.pk}/abort/", htmx=True)
    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-state="aborted"' in page and FAST_POLL not in page and "watch/?stamp=" in page
    assert "Aborted before anything changed on the target." in page
    assert Rollout.objects.get().state == "aborted"


def test_an_action_without_htmx_redirects_back_to_the_deployment(browser, iris, dev, actor):
    rollout = start(actor)
    response = post(browser, f"/rollouts/{rollout.pk}/abort/")
    assert response.status_code == 302 and response["Location"] == f"/deployments/{rollout.deployment_id}/"
    response = post(browser, f"/rollouts/{rollout.pk}/abort/")
    assert response.status_code == 409 and "only a " in response.content.decode()


# --- Promote, roll back, unpin --------------------------------------------------------------
def test_promote_is_offered_once_something_serves_and_starts_the_next_environment(browser, iris, staging, actor):
    rollout = start(actor, version=2)
    pk = rollout.deployment_id
    assert "Promote to staging" not in browser.get(f"/deployments/{pk}/").content.decode()
    settle(rollout)
    assert "Promote to staging" in browser.get(f"/deployments/{pk}/").content.decode()

    response = post(browser, f"/deployments/{pk}/promote/", {"environment": "staging"})
    downstream = Deployment.objects.get(environment__name="staging")
    assert response.status_code == 302 and response["Location"] == f"/deployments/{downstream.pk}/"
    release = downstream.releases.get()
    assert release.kind == "promote" and release.model_version.version == 2
    assert release.reason == "promoted from dev release 1"


def test_promoting_when_nothing_serves_is_refused_409_on_the_page(browser, iris, staging, actor):
    rollout = start(actor)
    response = post(browser, f"/deployments/{rollout.deployment_id}/promote/", {"environment": "staging"})
    assert response.status_code == 409
    assert "Nothing serves in iris in dev yet: deploy a version there before promoting it." in (
        response.content.decode()
    )
    assert AuditEvent.objects.filter(action="deployment.promote", outcome="invalid").count() == 1


def test_rollback_needs_a_reason_then_pins_and_unpin_re_renders_the_panel(browser, iris, dev, actor):
    first = settle(start(actor, version=1))
    settle(start(actor, version=2))
    pk = first.deployment_id
    page = browser.get(f"/deployments/{pk}/").content.decode()
    assert "the previous successful release" in page and re.search(r'<option value="1"\s*>release 1 · v1', page)

    response = post(browser, f"/deployments/{pk}/rollback/", {"to_release": "", "reason": "  "})
    assert response.status_code == 400
    assert "Say why you roll back: a reason is required." in response.content.decode()
    assert '<details class="rollback" open>' in response.content.decode()
    assert AuditEvent.objects.filter(action="deployment.rollback", outcome="invalid").count() == 1

    third = start(actor, version=3)  # meanwhile, someone deploys from another tab: this form is stale
    response = post(browser, f"/deployments/{pk}/rollback/", {"to_release": "1", "reason": "v2 drifts"})
    assert response.status_code == 409
    assert f"Rollout #{third.pk} is pending: abort it" in response.content.decode()
    # (shown at the top: the panel of an active rollout offers no rollback form)
    services.abort_rollout(third, actor=actor)

    response = post(browser, f"/deployments/{pk}/rollback/", {"to_release": "1", "reason": "v2 drifts"})
    assert response.status_code == 302 and response["Location"] == f"/deployments/{pk}/"
    release = Release.objects.get(number=4)
    assert release.kind == "rollback" and release.source.number == 1 and release.reason == "v2 drifts"
    assert "Pinned" not in browser.get(f"/deployments/{pk}/").content.decode()  # nothing rolled back yet
    rollout = release.rollout
    Rollout.objects.filter(pk=rollout.pk).update(state=RolloutState.PROGRESSING, lease_owner="worker")
    rollout.refresh_from_db()
    engine.commit(rollout, engine.Step(fields={"state": RolloutState.SUCCEEDED}), "worker")  # release 4 serves
    page = browser.get(f"/deployments/{pk}/").content.decode()
    assert "Pinned" in page and "rolled back to release 1: v2 drifts" in page

    response = post(browser, f"/deployments/{pk}/unpin/", htmx=True)
    assert response.status_code == 200
    assert "Pinned" not in response.content.decode().split('id="action-message"')[0]
    assert "takes promotions again" in response.content.decode()
    assert not Deployment.objects.get(pk=pk).pinned
    assert AuditEvent.objects.filter(action="deployment.unpin", outcome="success").count() == 1


# --- The list and the history -------------------------------------------------------------------
def test_the_deployments_list_shows_state_release_endpoint_and_pin_and_filters(browser, iris, staging, actor):
    settle(start(actor, version=2))
    start(actor, version=3)  # a second rollout in dev, pending
    Deployment.objects.update(pinned=True, pinned_reason="rolled back to release 1: drift")
    services.promote(Deployment.objects.get(), actor=actor)
    page = browser.get("/deployments/").content.decode()
    rows = page.split("<tbody>")[1].split("</tbody>")[0].split("<tr>")[1:]
    assert len(rows) == 2
    assert "dev" in rows[0] and 'data-state="pending"' in rows[0] and "release 1" in rows[0]
    assert "v2" in rows[0] and "http://127.0.0.1:18080" in rows[0] and "pinned" in rows[0]
    assert "staging" in rows[1] and 'data-state="pending"' in rows[1] and "pinned" not in rows[1]
    filtered = browser.get("/deployments/?environment=staging").content.decode()
    assert filtered.count('href="/deployments/') - filtered.count('href="/deployments/"') == 1


def test_an_idle_local_deployment_says_what_its_target_last_showed_for_the_same_queries(browser, iris, staging, actor):
    """Once its rollout ended, the sweeper keeps writing the local target's status into the newest rollout:
    the state shown (list page, API, live panel) comes from it, not from "it has a current release"."""
    rollout = settle(start(actor))
    deployment_id = rollout.deployment_id

    def shown(status: dict) -> tuple[str, str, str, str]:
        Rollout.objects.filter(pk=rollout.pk).update(status=status)
        listed = browser.get("/deployments/?environment=dev").content.decode()
        (body,) = browser.get("/api/v1/deployments/?environment=dev").json()["results"]
        assert re.search(r'data-state="([a-z_]+)"', listed).group(1) == body["state"]
        panel = browser.get(f"/deployments/{deployment_id}/live/", **HTMX).content.decode()
        return body["state"], body["endpoint"], listed, panel

    def with_ready(ready: int) -> dict:
        status = status_of(1)
        status["releases"]["1"].update(ready=ready, available=ready, done=ready == 2)
        return status

    assert shown({})[0] == "serving"  # no status written yet (a rollout before there were any)
    assert shown(with_ready(2))[:2] == ("serving", "http://127.0.0.1:18080")
    state, endpoint, _, panel = shown(with_ready(1))
    assert (state, endpoint) == ("degraded", "http://127.0.0.1:18080")
    assert "fewer replicas are ready than asked for" in panel
    state, endpoint, _, panel = shown(with_ready(0))
    assert (state, endpoint) == ("down", "http://127.0.0.1:18080")
    assert "no replica is ready: requests are refused" in panel
    state, endpoint, listed, panel = shown({"endpoint": None, "weights": {}, "releases": {}})
    assert (state, endpoint) == ("stopped", "")  # stop_local_deployments: nothing runs, the port was given back
    assert "http://127.0.0.1:18080" not in listed and "http://127.0.0.1:18080" not in panel
    assert "nothing of release 1 runs any more" in panel
    assert shown({"endpoint": "http://127.0.0.1:18080", "weights": {}, "releases": {}})[0] == "down"  # router only

    # A rollout that is active says its own state; on Kubernetes (no sweeper's status) a release serves.
    newer = start(actor, version=2)
    assert browser.get(f"/api/v1/deployments/{deployment_id}/").json()["state"] == "pending"
    settle(newer, "aborted", status={"endpoint": None, "weights": {}, "releases": {}})
    assert browser.get(f"/api/v1/deployments/{deployment_id}/").json()["state"] == "stopped"
    Environment.objects.filter(name="dev").update(target="kubernetes")
    assert browser.get(f"/api/v1/deployments/{deployment_id}/").json()["state"] == "serving"

    def queries(url: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert browser.get(url).status_code == 200
        return len(captured.captured_queries)

    one = queries("/api/v1/deployments/"), queries("/deployments/")
    settle(start(actor, environment="staging"), status=with_ready(1))
    assert browser.get("/api/v1/deployments/").json()["count"] == 2
    assert (queries("/api/v1/deployments/"), queries("/deployments/")) == one


def test_the_history_lists_every_release_newest_first_with_how_it_ended(browser, iris, dev, actor):
    settle(start(actor, version=1, reason="first"))
    settle(start(actor, version=2, reason="second"))
    settle(start(actor, version=3, reason="third"), "rolled_back", failure_reason="Analysis failed: error rate 9%")
    settle(start(actor, version=3, reason="fourth"), "aborted", failure_reason="Aborted by alice")
    deployment = Deployment.objects.get()
    settle(services.rollback(deployment, actor=actor, reason="back to one", to_release=1)[1])
    page = browser.get(f"/deployments/{deployment.pk}/history/").content.decode()
    numbers = re.findall(r'<td class="num">(\d+)', page)
    assert numbers == ["5", "4", "3", "2", "1"]
    assert "back to one" in page and "to release 1" in page and "rollback" in page
    assert "Analysis failed: error rate 9%" in page and "rolled back" in page
    assert "Aborted by alice" in page and page.count("alice") >= 4


def test_the_history_pages_25_releases_at_a_time_for_the_same_queries(browser, iris, dev, actor):
    def grow(count: int) -> int:
        for _ in range(count):
            settle(start(actor, version=1))
        with CaptureQueriesContext(connection) as captured:
            response = browser.get(f"/deployments/{Deployment.objects.get().pk}/history/")
        assert response.status_code == 200
        return len(captured.captured_queries)

    few = grow(2)
    many = grow(28)
    assert many == few
    page = browser.get(f"/deployments/{Deployment.objects.get().pk}/history/?page=2").content.decode()
    assert "Page 2 of 2" in page and re.findall(r'<td class="num">(\d+)', page) == ["5", "4", "3", "2", "1"]
