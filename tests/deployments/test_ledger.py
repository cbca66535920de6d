"""The "what served when" ledger: how it is written, what it answers, through the API and the page.

The ledger's own tests write intervals at explicit instants and ask between them;
the end-to-end test drives the real engine on the local target with a real worker.
"""

from __future__ import annotations

import importlib
import re
from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from controlplane.audit import Actor
from controlplane.errors import InvalidInput
from deployments import ledger, services
from deployments.engine import Step, commit
from deployments.models import Deployment, Environment, Release, Rollout, RolloutEvent, ServingInterval
from registry.models import Model
from tests.deployments.rollouts import deploy, upload, wait_state
from tests.factories import bulk_versions

T0 = timezone.now().replace(microsecond=0) - timedelta(days=1)  # a day ago: instants to ask about


def at(seconds: float):
    return T0 + timedelta(seconds=seconds)


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
    env = services.create_environment("dev", actor=actor)
    Environment.objects.filter(pk=env.pk).update(created_at=T0 - timedelta(days=1))
    env.refresh_from_db()
    return env


def release(actor, version: int, model: str = "iris", env: str = "dev", **kwargs) -> Release:
    """A release as a deploy makes it, its rollout then ended as the worker would end it (no traffic moved)."""
    rollout = services.deploy(model, env, version, actor=actor, **kwargs)[1]
    return settle(rollout)


def settle(rollout: Rollout) -> Release:
    Rollout.objects.filter(pk=rollout.pk).update(state="succeeded", finished_at=timezone.now())
    Deployment.objects.filter(pk=rollout.deployment_id).update(current_release=rollout.release, created_at=T0)
    return Release.objects.select_related("deployment").get(pk=rollout.release_id)


def shares(rows) -> list[tuple[int, int]]:
    return [(row.release.number, row.weight_percent) for row in rows]


def served(deployment, seconds: float) -> list[tuple[int, int]]:
    return shares(ledger.serving_at(Deployment.objects.filter(pk=deployment.pk), at(seconds)))


# --- Writing and reading the ledger ---------------------------------------------------------------
@pytest.mark.django_db
def test_the_ledger_answers_at_every_instant_of_deploy_canary_pause_promote_and_rollback(actor, iris, dev):
    first = release(actor, 1, reason="first light")
    second = release(actor, 2, reason="better recall")
    deployment = Deployment.objects.get(pk=first.deployment_id)
    back = services.rollback(deployment, actor=actor, reason="v2 drifts", to_release=1)[1].release
    r1, r2, r3 = first.pk, second.pk, back.pk

    assert ledger.record_serving(deployment.pk, {r1: 100}, at(10)) == 1  # deploy
    assert ledger.record_serving(deployment.pk, {r1: 80, r2: 20}, at(20)) == 3  # canary at 20%: one closed, two opened
    assert ledger.record_serving(deployment.pk, {r1: 80, r2: 20}, at(30)) == 0  # paused: the same split again
    assert ledger.record_serving(deployment.pk, {r2: 100, r1: 0}, at(40)) == 3  # 100%: both closed, one opened
    assert ledger.record_serving(deployment.pk, {r3: 100}, at(50)) == 2  # the rollback serves

    assert served(deployment, 9.999) == []  # before anything served
    assert served(deployment, 10) == [(1, 100)]  # at the instant of a change: the new split
    assert served(deployment, 19.5) == [(1, 100)]
    assert served(deployment, 20) == [(1, 80), (2, 20)]  # a canary shows both releases, the larger share first
    assert served(deployment, 35) == [(1, 80), (2, 20)]
    assert served(deployment, 45) == [(2, 100)]
    assert served(deployment, 50) == served(deployment, 86_400 * 3) == [(3, 100)]  # a day later, still the rollback

    stable, canary = ledger.serving_at(Deployment.objects.filter(pk=deployment.pk), at(35))
    assert (stable.since, stable.until) == (at(20), at(40))
    assert (canary.since, canary.until) == (at(20), at(40))  # the pause wrote nothing: one interval
    assert canary.release.reason == "better recall" and canary.release.created_by.username == "alice"
    assert canary.recorded is True and canary.approved_by == []
    # Closed, never deleted: every split is still there, in order.
    rows = ServingInterval.objects.filter(deployment=deployment).order_by("started_at", "release__number")
    assert [(r.release.number, r.weight_percent, r.started_at, r.ended_at) for r in rows] == [
        (1, 100, at(10), at(20)),
        (1, 80, at(20), at(40)),
        (2, 20, at(20), at(40)),
        (2, 100, at(40), at(50)),
        (3, 100, at(50), None),
    ]


@pytest.mark.django_db
def test_nothing_serves_after_a_first_deploy_is_reverted(actor, iris, dev):
    first = release(actor, 1)
    assert ledger.record_serving(first.deployment_id, {first.pk: 100}, at(10)) == 1
    assert ledger.record_serving(first.deployment_id, {}, at(20)) == 1
    assert ledger.record_serving(first.deployment_id, {}, at(30)) == 0
    assert served(first.deployment, 15) == [(1, 100)] and served(first.deployment, 20) == []


@pytest.mark.django_db
def test_a_change_stamped_before_the_open_interval_began_is_moved_to_its_start(actor, iris, dev):
    """A worker whose clock runs behind the one that opened the interval must not fail the step."""
    first = release(actor, 1)
    second = release(actor, 2)
    ledger.record_serving(first.deployment_id, {first.pk: 100}, at(10))
    ledger.record_serving(first.deployment_id, {second.pk: 100}, at(9))
    rows = ServingInterval.objects.order_by("started_at", "pk").values_list("release__number", "started_at", "ended_at")
    assert list(rows) == [(1, at(10), at(10)), (2, at(10), None)]


@pytest.mark.django_db
def test_the_engine_writes_the_ledger_in_the_transaction_that_commits_the_step(actor, iris, dev):
    rollout = services.deploy("iris", "dev", 1, actor=actor)[1]

    def tick(serving, state="deploying") -> str:
        Rollout.objects.filter(pk=rollout.pk).update(lease_owner="me")
        rollout.refresh_from_db()
        return commit(rollout, Step(fields={"state": state}, serving=serving), "me")

    assert tick({rollout.release_id: 100}) == "deploying"
    [interval] = ServingInterval.objects.filter(deployment=rollout.deployment_id)
    step_at = RolloutEvent.objects.filter(rollout=rollout, kind="transition").get().at
    assert (interval.weight_percent, interval.started_at, interval.ended_at) == (100, step_at, None)
    assert tick({rollout.release_id: 100}, state="progressing") == "progressing"  # a repeated split
    assert ServingInterval.objects.filter(deployment=rollout.deployment_id).count() == 1

    # A step computed while a person acted is thrown away, and its traffic split with it.
    Rollout.objects.filter(pk=rollout.pk).update(lease_owner="me")
    rollout.refresh_from_db()
    Rollout.objects.filter(pk=rollout.pk).update(revision=rollout.revision + 1)  # someone paused meanwhile
    assert commit(rollout, Step(serving={}), "me") == "superseded"
    assert ServingInterval.objects.get(deployment=rollout.deployment_id).ended_at is None


@pytest.mark.django_db
def test_a_deployment_without_ledger_rows_is_answered_from_its_current_release(actor, iris, dev):
    first = release(actor, 1, reason="made before the ledger")
    ended = first.rollout.finished_at
    rows = ledger.serving_at(Deployment.objects.filter(pk=first.deployment_id), ended)
    assert shares(rows) == [(1, 100)] and rows[0].recorded is False and rows[0].since == ended
    before = ledger.serving_at(Deployment.objects.filter(pk=first.deployment_id), ended - timedelta(seconds=1))
    assert before == []


@pytest.mark.django_db
def test_the_migration_opens_an_interval_for_each_current_release_from_the_end_of_its_rollout(actor, iris, dev):
    from django.apps import apps

    migration = importlib.import_module("deployments.migrations.0003_serving_ledger")
    first = release(actor, 1)
    services.deploy("iris", "dev", 2, actor=actor)  # a rollout still active: its release does not serve yet
    migration.open_current_releases(apps, None)
    [interval] = ServingInterval.objects.all()
    assert (interval.release, interval.weight_percent, interval.ended_at) == (first, 100, None)
    assert interval.started_at == first.rollout.finished_at


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-05-01T14:30:00Z", "2026-05-01T14:30:00+00:00"),
        ("2026-05-01T16:30:00+02:00", "2026-05-01T14:30:00+00:00"),
        ("2026-05-01T14:30", "2026-05-01T14:30:00+00:00"),  # a browser's datetime-local: UTC
        ("2026-05-01 14:30:00.250", "2026-05-01T14:30:00.250000+00:00"),
    ],
)
def test_instants_are_read_as_iso_8601_and_utc_without_an_offset(text, expected):
    assert ledger.parse_instant(text).isoformat() == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01T00:00:00Z", "2026-05-01T25:00", "1714570000"])
def test_garbage_instants_are_refused_with_an_example(text):
    with pytest.raises(InvalidInput, match=r"use e\.g\. 2026-05-01T14:30:00Z"):
        ledger.parse_instant(text)


def test_no_instant_means_now():
    before = timezone.now()
    assert before <= ledger.parse_instant("") <= timezone.now()


# --- The API ---------------------------------------------------------------------------------------
@pytest.fixture
def canary(actor, iris, dev):
    """iris in dev: release 1 alone from 10 s, then a canary of release 2 at 20% from 20 s."""
    first = release(actor, 1, reason="first light")
    second = release(actor, 2, reason="better recall")
    ledger.record_serving(first.deployment_id, {first.pk: 100}, at(10))
    ledger.record_serving(first.deployment_id, {first.pk: 80, second.pk: 20}, at(20))
    return first.deployment


@pytest.mark.django_db
def test_the_environment_endpoint_lists_both_releases_of_a_canary_with_who_and_why(api, canary):
    response = api.get("/api/v1/environments/dev/serving/", {"at": at(25).isoformat()})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["environment"] == "dev" and body["at"] == at(25).isoformat().replace("+00:00", "Z")
    assert body["count"] == 1 and body["note"] == ""
    stable, new = body["results"]
    assert stable == {
        "model": "iris",
        "deployment": canary.pk,
        "release": 1,
        "version": 1,
        "image": "",
        "digest": "",
        "weight_percent": 80,
        "since": at(20).isoformat().replace("+00:00", "Z"),
        "until": None,
        "kind": "deploy",
        "source_release": None,
        "deployed_by": "alice",
        "reason": "first light",
        "rollout": {"id": Release.objects.get(number=1).rollout.pk, "state": "succeeded"},
        "approved_by": [],
        "recorded": True,
    }
    assert (new["release"], new["weight_percent"], new["reason"]) == (2, 20, "better recall")
    earlier = api.get("/api/v1/environments/dev/serving/", {"at": at(15).isoformat()}).json()["results"]
    assert [(r["release"], r["weight_percent"]) for r in earlier] == [(1, 100)]


@pytest.mark.django_db
def test_the_deployment_endpoint_answers_for_one_deployment(api, canary):
    body = api.get(f"/api/v1/deployments/{canary.pk}/serving/?at={at(25).isoformat().replace('+00:00', 'Z')}").json()
    assert body["deployment"] == canary.pk
    assert [(r["release"], r["weight_percent"]) for r in body["results"]] == [(1, 80), (2, 20)]
    # now, by default: the canary still runs
    now = api.get(f"/api/v1/deployments/{canary.pk}/serving/").json()
    assert [(r["release"], r["weight_percent"]) for r in now["results"]] == [(1, 80), (2, 20)]


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/api/v1/environments/dev/serving/", "/api/v1/deployments/{pk}/serving/"])
def test_a_garbage_time_is_refused_400_with_what_to_send(api, canary, url):
    response = api.get(url.format(pk=canary.pk), {"at": "last tuesday"})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid" and "at" in body["fields"]
    assert (
        body["error"]
        == "at='last tuesday' is not an ISO 8601 time: use e.g. 2026-05-01T14:30:00Z (no offset means UTC)."
    )


@pytest.mark.django_db
def test_before_the_environment_existed_the_answer_is_empty_with_a_note(api, canary, dev):
    long_ago = (dev.created_at - timedelta(days=30)).isoformat()
    body = api.get("/api/v1/environments/dev/serving/", {"at": long_ago}).json()
    assert body["results"] == [] and "Environment dev was created at" in body["note"]
    body = api.get(f"/api/v1/deployments/{canary.pk}/serving/", {"at": long_ago}).json()
    assert body["results"] == [] and "iris in dev was created at" in body["note"]
    assert api.get("/api/v1/environments/nowhere/serving/").status_code == 404


@pytest.mark.django_db
def test_the_endpoints_are_in_the_openapi_schema(api):
    schema = api.get("/api/schema/", {"format": "json"}).json()
    for path in ("/api/v1/environments/{name}/serving/", "/api/v1/deployments/{id}/serving/"):
        operation = schema["paths"][path]["get"]
        assert [(p["name"], p["schema"]["format"]) for p in operation["parameters"] if p["name"] == "at"] == [
            ("at", "date-time")
        ]
    serving = schema["components"]["schemas"]["Serving"]["properties"]
    assert {"weight_percent", "since", "deployed_by", "reason", "approved_by", "rollout", "digest"} <= serving.keys()


def many_deployments(actor, alice, count: int) -> None:
    """`count` more models deployed to dev, each with an interval open since 10 s."""
    for _ in range(count):
        model = Model.objects.create(name=f"m{Model.objects.count()}", created_by=alice)
        bulk_versions(model, 1, uploaded_by=alice)
        made = release(actor, 1, model=model.name)
        ledger.record_serving(made.deployment_id, {made.pk: 100}, at(10))


@pytest.mark.django_db
def test_the_endpoint_and_the_page_cost_the_same_queries_for_2_or_12_deployments(api, browser, actor, alice, canary):
    def queries(url: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            response = (api if url.startswith("/api") else browser).get(url, {"at": at(25).isoformat()})
        assert response.status_code == 200
        return len(captured.captured_queries)

    urls = ("/api/v1/environments/dev/serving/", "/environments/dev/")
    api.get(urls[0])  # a token's use is written at most once a minute: not in what is counted
    many_deployments(actor, alice, 1)
    few = [queries(url) for url in urls]
    many_deployments(actor, alice, 10)
    assert [queries(url) for url in urls] == few
    body = api.get(urls[0], {"at": at(25).isoformat()}).json()
    assert body["count"] == 12 and len(body["results"]) == 13  # the canary's deployment has two rows


# --- The page --------------------------------------------------------------------------------------
@pytest.fixture
def browser(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


@pytest.mark.django_db
def test_the_environment_page_shows_what_served_at_the_time_asked(browser, canary):
    page = browser.get("/environments/dev/", {"at": at(25).strftime("%Y-%m-%dT%H:%M:%S")}).content.decode()
    assert "What was serving at…" in page and 'type="datetime-local" name="at"' in page
    assert f'value="{at(25):%Y-%m-%dT%H:%M:%S}"' in page
    rows = page.split("<tbody>")[1].split("</tbody>")[0]
    assert rows.count("<tr>") == 2
    assert "80%" in rows and "20%" in rows and "first light" in rows and "better recall" in rows and "alice" in rows
    earlier = browser.get("/environments/dev/", {"at": at(5).isoformat()}).content.decode()
    assert "Nothing served in dev at that time." in earlier
    # Now, by default: the form holds the current time.
    now = browser.get("/environments/dev/").content.decode()
    shown = re.search(r'name="at" step="1" value="([0-9T:-]+)"', now).group(1)
    assert abs(datetime.fromisoformat(shown + "+00:00") - timezone.now()) < timedelta(minutes=1)
    assert "80%" in now


@pytest.mark.django_db
def test_a_garbage_time_on_the_page_is_explained_next_to_the_form(browser, canary):
    response = browser.get("/environments/dev/", {"at": "soon"})
    assert response.status_code == 400
    assert "at=&#x27;soon&#x27; is not an ISO 8601 time" in response.content.decode()


@pytest.mark.django_db
def test_the_environment_list_and_the_history_link_to_the_ledger(browser, canary):
    assert 'href="/environments/dev/"' in browser.get("/environments/").content.decode()
    history = browser.get(f"/deployments/{canary.pk}/history/").content.decode()
    assert 'id="serving-link"' in history and 'href="/environments/dev/"' in history
    finished = Release.objects.get(deployment=canary, number=2).rollout.finished_at
    link = f'href="/environments/dev/?at={finished.isoformat().replace(":", "%3A").replace("+", "%2B")}"'
    assert link in history


# --- End to end: the real engine on the local target -------------------------------------------
@pytest.mark.worker
@pytest.mark.slow
def test_the_engine_records_what_served_through_a_paused_canary_and_its_promotion(api, dev, model_name, model_dir):
    v1, v2 = (upload(api, model_name, model_dir[k]) for k in ("one", "two"))
    first = deploy(api, model_name, v1, reason="first light")
    wait_state(first["rollout"]["id"], "succeeded")

    def ask(when) -> list[tuple[int, int]]:
        body = api.get("/api/v1/environments/dev/serving/", {"at": when.isoformat()}).json()
        return [(r["release"], r["weight_percent"]) for r in body["results"]]

    def traffic_moved() -> list:
        """When each step that moved traffic committed, as the rollouts' timelines say."""
        return list(
            RolloutEvent.objects.filter(kind="step", data__has_key="weights")
            .order_by("at")
            .values_list("at", flat=True)
        )

    plan = {"strategy": "canary", "steps": [{"set_weight": 50}, {"pause": {}}]}
    second = deploy(api, model_name, v2, plan=plan, reason="better recall")
    wait_state(second["rollout"]["id"], "paused")
    v1_served, canary_moved = traffic_moved()
    deployed = Deployment.objects.get(pk=first["id"]).created_at

    assert ask(deployed - timedelta(milliseconds=1)) == []  # before anything served
    assert ask(v1_served) == ask(canary_moved - timedelta(milliseconds=1)) == [(1, 100)]
    assert ask(canary_moved) == ask(timezone.now()) == [(1, 50), (2, 50)]

    assert api.post(f"/api/v1/rollouts/{second['rollout']['id']}/resume/").status_code == 200
    wait_state(second["rollout"]["id"], "succeeded")
    *_, promoted = traffic_moved()  # the plan's last step: 100%
    assert ask(promoted) == [(2, 100)] and ask(promoted - timedelta(milliseconds=1)) == [(1, 50), (2, 50)]
    assert ask(canary_moved) == [(1, 50), (2, 50)]  # the past is unchanged
    [now] = api.get(f"/api/v1/deployments/{first['id']}/serving/").json()["results"]
    assert (now["release"], now["since"], now["reason"], now["deployed_by"], now["rollout"]["state"]) == (
        2,
        promoted.isoformat().replace("+00:00", "Z"),
        "better recall",
        "alice",
        "succeeded",
    )
