"""GET /api/timeline: per host the runs, warm-ups, leases, the lock and the conflicts of
the next hours; `hours` outside 1..168 is a 422 naming it."""

from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest

from arbiter.models import Host
from catalog.models import CatalogModel
from coordination import locks
from coordination.leases import operations as leases
from coordination.models import ScheduledJob, WarmUp
from coordination.schedules import register_job

pytestmark = pytest.mark.django_db
NOW = datetime(2030, 1, 1, 0, 0, tzinfo=UTC)


@pytest.fixture
def rows(db):
    for name in ("spark-1", "spark-2"):
        Host.objects.create(name=name, address=f"10.0.0.{name[-1]}")
    for key in ("qwen", "llama"):
        CatalogModel.objects.create(key=key, hub_repo=f"org/{key}", served_name=key)


def job(job_id: str, cron: str, model: str, host: str | None = "spark-1", lead=600, hold=1800):
    body = {"id": job_id, "name": job_id, "cron": cron, "timezone": "UTC", "target_model": model}
    if host is not None:
        body["warm_up"] = {"host": host, "lead_seconds": lead, "hold_seconds": hold}
    return register_job(body)[0]


def get(client, **params):
    with mock.patch("django.utils.timezone.now", return_value=NOW):
        return client.get("/api/timeline", params)


def host(body: dict, name: str) -> dict:
    return next(h for h in body["hosts"] if h["name"] == name)


def test_it_places_runs_and_warm_ups_on_their_host(key_client, rows):
    job("nightly", "30 2 * * *", "qwen")
    job("anywhere", "0 5 * * *", "llama", host=None)
    response = get(key_client)
    assert response.status_code == 200
    body = response.json()
    assert body["hours"] == 24
    spark = host(body, "spark-1")
    assert [r["run_at"] for r in spark["runs"]] == ["2030-01-01T02:30:00Z"]
    assert spark["runs"][0]["window_start"] == "2030-01-01T02:20:00Z"
    assert spark["runs"][0]["window_end"] == "2030-01-01T03:00:00Z"
    [warm_up] = spark["warm_ups"]
    assert warm_up["state"] == "planned" and warm_up["starts_at"] == "2030-01-01T02:15:00Z"
    assert [r["job_id"] for r in body["unplaced_runs"]] == ["anywhere"]
    assert host(body, "spark-2")["runs"] == [] and body["conflicts"] == []


def test_it_reports_two_jobs_needing_different_models_on_one_host_at_once(key_client, rows):
    job("eval-a", "0 3 * * *", "qwen", hold=1800)
    job("eval-b", "15 3 * * *", "llama", lead=300, hold=600)
    job("eval-c", "20 3 * * *", "qwen", host="spark-2")  # another host: no conflict
    body = get(key_client).json()
    [conflict] = body["conflicts"]
    assert conflict["kind"] == "jobs" and conflict["host"] == "spark-1"
    assert conflict["job_ids"] == ["eval-a", "eval-b"]
    assert (conflict["start"], conflict["end"]) == ("2030-01-01T03:10:00Z", "2030-01-01T03:25:00Z")
    assert host(body, "spark-1")["conflicts"] == [conflict]


def test_it_sees_no_conflict_between_runs_of_the_same_model(key_client, rows):
    job("eval-a", "0 3 * * *", "qwen")
    job("eval-b", "15 3 * * *", "qwen")
    assert get(key_client).json()["conflicts"] == []


def test_it_shows_leases_the_lock_and_a_warm_up_blocked_by_a_lease(key_client, rows):
    with mock.patch("django.utils.timezone.now", return_value=NOW):
        leases.acquire("llama", "spark-1", "alice", 7200, "long eval")
        locks.acquire("bob", 600, "maintenance")
    job("nightly", "0 1 * * *", "qwen")
    body = get(key_client).json()
    spark = host(body, "spark-1")
    [lease] = spark["leases"]
    assert (lease["model"], lease["holder"], lease["expires_at"]) == (
        "llama",
        "alice",
        "2030-01-01T02:00:00Z",
    )
    assert body["lock"] == {
        "held": True,
        "holder": "bob",
        "purpose": "maintenance",
        "expires_at": "2030-01-01T00:10:00Z",
    }
    [conflict] = spark["conflicts"]
    assert conflict["kind"] == "lease" and conflict["job_ids"] == ["nightly"]
    assert "alice" in conflict["message"]


def test_it_shows_a_missed_warm_up_as_a_conflict(key_client, rows):
    nightly = job("nightly", "30 2 * * *", "qwen")
    WarmUp.objects.create(
        job=nightly,
        run_at=datetime(2030, 1, 1, 2, 30, tzinfo=UTC),
        host_name="spark-1",
        model_key="qwen",
        state=WarmUp.MISSED,
        reason="the swap lock is held by 'bob'",
        hold_until=datetime(2030, 1, 1, 3, 0, tzinfo=UTC),
    )
    spark = host(get(key_client).json(), "spark-1")
    assert spark["warm_ups"][0]["state"] == "missed"
    [conflict] = spark["conflicts"]
    assert conflict["kind"] == "lease" and "bob" in conflict["message"]


@pytest.mark.parametrize("hours", ["0", "169", "-1", "many"])
def test_it_refuses_hours_out_of_range_naming_the_field(key_client, rows, hours):
    response = get(key_client, hours=hours)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "hours"


def test_it_takes_up_to_a_week(key_client, rows):
    job("nightly", "30 2 * * *", "qwen")
    body = get(key_client, hours=168).json()
    assert len(host(body, "spark-1")["runs"]) == 7
    assert body["end"] == (NOW + timedelta(hours=168)).isoformat().replace("+00:00", "Z")


def test_it_draws_the_timeline_page_with_the_conflict(admin_client, rows):
    job("eval-a", "0 * * * *", "qwen")  # hourly: the page draws the real next 24 hours
    job("eval-b", "15 * * * *", "llama")
    response = admin_client.get("/timeline/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="timeline-host-spark-1"' in html and "timeline-host-conflict" in html
    assert "need different models on spark-1" in html
    assert ScheduledJob.objects.count() == 2
