"""Schedule validation: cron with exactly five fields and field-specific errors, IANA
timezones, an existing target model; every rejection is a 422 naming the field."""

import pytest

from arbiter.errors import InvalidInput
from catalog.models import CatalogModel
from coordination.models import ScheduledJob
from coordination.schedules import validate_cron, validate_timezone

pytestmark = pytest.mark.django_db


@pytest.fixture
def model(db) -> CatalogModel:
    return CatalogModel.objects.create(
        key="qwen3-small", hub_repo="Qwen/Qwen3-0.6B", served_name="Qwen/Qwen3-0.6B"
    )


def job(**fields) -> dict:
    body = {
        "id": "nightly-eval",
        "name": "Nightly eval",
        "owner": "ml-team",
        "cron": "0 3 * * *",
        "timezone": "Europe/Riga",
        "target_model": "qwen3-small",
        "description": "",
    }
    body.update(fields)
    return body


def post(client, body):
    return client.post("/api/schedule", body, content_type="application/json")


@pytest.mark.parametrize("cron", ["* * * * *", "0 3 * * 7", "0 0 29 2 *", "*/15 9-17 * * MON-FRI"])
def test_it_accepts_valid_cron_expressions(key_client, model, cron):
    response = post(key_client, job(cron=cron))
    assert response.status_code == 201, response.json()
    assert response.json()["cron"] == cron
    assert ScheduledJob.objects.get(job_id="nightly-eval").cron == cron


@pytest.mark.parametrize(
    "cron, cron_field, words",
    [
        ("", None, ["expected 5 fields", "got none"]),
        ("*", None, ["expected 5 fields", "got 1", "hour, day of month, month, day of week"]),
        ("* * * * * *", None, ["expected 5 fields", "got 6", "seconds"]),
        ("0 0 30 2 *", "day of month", ["30 never occurs in month 2", "never fires"]),
        ("*/0 * * * *", "minute", ["step 0"]),
        ("61 * * * *", "minute", ["61 is out of range 0-59"]),
        ("0 24 * * *", "hour", ["24 is out of range 0-23"]),
        ("0 0 0 * *", "day of month", ["0 is out of range 1-31"]),
        ("0 0 * 13 *", "month", ["13 is out of range 1-12"]),
        ("0 0 * * 8", "day of week", ["8 is out of range 0-7"]),
        ("0 0 * * FRI-MON", "day of week", ["`FRI-MON` runs backwards"]),
        ("0 0 * JAM *", "month", ["`JAM` is not a number or a month name"]),
        ("0 0 * * 1#6", "day of week", ["#1 to #5"]),
        ("1,,2 * * * *", "minute", ["empty item"]),
        ("@daily", None, ["nicknames", "0 0 * * *"]),
    ],
)
def test_it_rejects_bad_cron_naming_the_field(key_client, model, cron, cron_field, words):
    response = post(key_client, job(cron=cron))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "validation_error"
    assert error["field"] == "cron"
    assert error["message"].startswith("cron: ")
    if cron_field:
        assert error["cron_field"] == cron_field
        assert error["message"].startswith(f"cron: {cron_field}: ")
    for word in words:
        assert word in error["message"]
    assert not ScheduledJob.objects.exists()


def test_it_words_an_out_of_range_minute_exactly(key_client, model):
    error = post(key_client, job(cron="61 * * * *")).json()["error"]
    assert error["message"] == "cron: minute: 61 is out of range 0-59"


def test_it_normalises_whitespace_in_cron():
    assert validate_cron("  0   3 *\t* 7 ") == "0 3 * * 7"


def test_it_rejects_a_schedule_that_never_fires():
    with pytest.raises(InvalidInput) as caught:
        validate_cron("* * */20 * 1L")  # 1st/21st of a month that is also its last Monday
    assert caught.value.field == "cron"
    assert "never fires" in caught.value.message


@pytest.mark.parametrize("name", ["Mars/Olympus", "europe/riga", "localtime", "", "../UTC"])
def test_it_rejects_an_unknown_timezone(key_client, model, name):
    response = post(key_client, job(timezone=name))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "timezone"
    assert error["message"].startswith("timezone: ")
    assert not ScheduledJob.objects.exists()


def test_it_suggests_the_right_spelling_of_a_timezone():
    with pytest.raises(InvalidInput, match="did you mean `Europe/Riga`"):
        validate_timezone("europe/riga")


def test_it_defaults_the_timezone_to_utc(key_client, model):
    body = job()
    del body["timezone"]
    response = post(key_client, body)
    assert response.status_code == 201
    assert response.json()["timezone"] == "UTC"


def test_it_rejects_an_unknown_model(key_client, model):
    response = post(key_client, job(target_model="no-such-model"))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "target_model"
    assert error["message"] == "target_model: no catalog model with key `no-such-model`"
    assert not ScheduledJob.objects.exists()


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"id": ""}, "id"),
        ({"id": "-leading-dash"}, "id"),
        ({"id": "has space"}, "id"),
        ({"id": "a/b"}, "id"),
        ({"id": "x" * 101}, "id"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "bell\x07"}, "name"),
        ({"owner": "nul\x00"}, "owner"),
        ({"description": "nul\x00"}, "description"),
        ({"cron": "0 3 * * *" + " " * 200}, "cron"),
        ({"cron": 5}, "cron"),
        ({"target_model": None}, "target_model"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_it_rejects_other_bad_fields_naming_them(key_client, model, fields, field):
    response = post(key_client, job(**fields))
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field
    assert not ScheduledJob.objects.exists()


@pytest.mark.parametrize("missing", ["id", "name", "cron", "target_model"])
def test_it_requires_the_identifying_fields(key_client, model, missing):
    body = job()
    del body[missing]
    response = post(key_client, body)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == missing


def test_it_keeps_newlines_in_descriptions(key_client, model):
    response = post(key_client, job(description="line one\nline two"))
    assert response.status_code == 201
    assert response.json()["description"] == "line one\nline two"


def test_it_rejects_a_bad_re_post_without_touching_the_row(key_client, model):
    assert post(key_client, job()).status_code == 201
    response = post(key_client, job(name="Renamed", cron="61 * * * *"))
    assert response.status_code == 422
    row = ScheduledJob.objects.get(job_id="nightly-eval")
    assert (row.name, row.cron) == ("Nightly eval", "0 3 * * *")
