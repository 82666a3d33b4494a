"""Schedule registry API: register (201), re-register in place (200), list, get, delete."""

from datetime import UTC, datetime
from unittest import mock

import pytest
from django.test import Client

from catalog.models import CatalogModel
from coordination.models import ScheduledJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def models(db) -> list[CatalogModel]:
    return [
        CatalogModel.objects.create(key="qwen3-small", hub_repo="Qwen/Qwen3-0.6B", served_name="q"),
        CatalogModel.objects.create(key="smollm2", local_path="/models/smollm2", served_name="s"),
    ]


def job(**fields) -> dict:
    body = {
        "id": "nightly-eval",
        "name": "Nightly eval",
        "owner": "ml-team",
        "cron": "30 3 * * *",
        "timezone": "Europe/Riga",
        "target_model": "qwen3-small",
        "description": "Runs the eval suite",
    }
    body.update(fields)
    return body


def post(client, body):
    return client.post("/api/schedule", body, content_type="application/json")


def frozen(moment: datetime):
    return mock.patch("django.utils.timezone.now", return_value=moment)


def test_it_registers_a_job(key_client, models):
    with frozen(datetime(2024, 3, 30, 12, tzinfo=UTC)):
        response = post(key_client, job())
    assert response.status_code == 201
    body = response.json()
    assert {k: body[k] for k in job()} == job()
    # Computed in Riga, returned in UTC: 03:30 EET, then the spring jump, then EEST.
    assert body["next_runs"] == [
        "2024-03-31T01:00:00Z",
        "2024-04-01T00:30:00Z",
        "2024-04-02T00:30:00Z",
        "2024-04-03T00:30:00Z",
        "2024-04-04T00:30:00Z",
    ]
    row = ScheduledJob.objects.get(job_id="nightly-eval")
    assert (row.name, row.owner, row.cron, row.timezone) == (
        "Nightly eval",
        "ml-team",
        "30 3 * * *",
        "Europe/Riga",
    )
    assert row.target_model == models[0]


def test_it_updates_in_place_when_an_id_is_posted_again(key_client, models):
    assert post(key_client, job()).status_code == 201
    before = ScheduledJob.objects.get(job_id="nightly-eval")

    changed = job(
        name="Nightly eval v2",
        owner="eval-team",
        cron="0 4 * * MON-FRI",
        timezone="UTC",
        target_model="smollm2",
        description="",
    )
    response = post(key_client, changed)
    assert response.status_code == 200
    assert {k: response.json()[k] for k in changed} == changed

    assert ScheduledJob.objects.count() == 1
    after = ScheduledJob.objects.get(job_id="nightly-eval")
    assert after.pk == before.pk
    assert after.created_at == before.created_at
    assert after.updated_at >= before.updated_at
    assert (after.name, after.owner, after.cron, after.timezone, after.description) == (
        "Nightly eval v2",
        "eval-team",
        "0 4 * * MON-FRI",
        "UTC",
        "",
    )
    assert after.target_model == models[1]


def test_it_lists_jobs_with_their_next_runs(key_client, models):
    post(key_client, job())
    post(key_client, job(id="hourly.probe", name="Probe", cron="0 * * * *", timezone="UTC"))
    with frozen(datetime(2024, 10, 27, 0, 10, tzinfo=UTC)):
        listed = key_client.get("/api/schedule")
    assert listed.status_code == 200
    by_id = {item["id"]: item for item in listed.json()}
    assert list(by_id) == ["hourly.probe", "nightly-eval"]
    assert by_id["hourly.probe"]["next_runs"][:2] == [
        "2024-10-27T01:00:00Z",
        "2024-10-27T02:00:00Z",
    ]
    # 00:10 UTC is 03:10 EEST: the day's 03:30 is still ahead, and it runs only once.
    assert by_id["nightly-eval"]["next_runs"][:2] == [
        "2024-10-27T00:30:00Z",
        "2024-10-28T01:30:00Z",
    ]


def test_it_gets_one_job(key_client, models):
    post(key_client, job())
    response = key_client.get("/api/schedule/nightly-eval")
    assert response.status_code == 200
    assert response.json()["name"] == "Nightly eval"
    assert len(response.json()["next_runs"]) == 5


def test_it_gets_404_for_an_unknown_job(key_client, models):
    response = key_client.get("/api/schedule/nope")
    assert response.status_code == 404
    assert response.json()["error"] == {
        "type": "not_found",
        "message": "no scheduled job with id 'nope'",
        "field": "id",
    }


def test_it_deletes_a_job(key_client, models):
    post(key_client, job())
    response = key_client.delete("/api/schedule/nightly-eval")
    assert response.status_code == 204
    assert response.content == b""
    assert not ScheduledJob.objects.exists()
    assert key_client.get("/api/schedule/nightly-eval").status_code == 404
    assert CatalogModel.objects.count() == 2  # the model it pointed at stays


def test_it_gets_404_deleting_an_unknown_job(key_client, models):
    post(key_client, job())
    response = key_client.delete("/api/schedule/other")
    assert response.status_code == 404
    assert response.json()["error"]["field"] == "id"
    assert ScheduledJob.objects.count() == 1


def test_it_requires_authentication(models):
    anonymous = Client()
    assert anonymous.get("/api/schedule").status_code == 401
    assert post(anonymous, job()).status_code == 401
    assert not ScheduledJob.objects.exists()


def test_it_lets_a_logged_in_user_read_the_registry(bob, key_client, models):
    post(key_client, job())
    browser = Client()
    browser.force_login(bob)
    assert [item["id"] for item in browser.get("/api/schedule").json()] == ["nightly-eval"]
