"""Leftover hardening (issue 13, item 8): body limits answered with the JSON 413 on every
route and never spooled to disk, the data directory and database files private, and
/healthz and /readyz that never show a raw database error."""

import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from asgiref.testing import ApplicationCommunicator
from django.conf import settings as django_settings
from django.core.handlers import asgi as django_asgi
from django.db import OperationalError
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from arbiter.asgi import application

BASE_DIR = Path(__file__).resolve().parents[2]
SECRET_DETAIL = "unable to open database file /srv/secret-volume/arbiter.sqlite3 (user ops)"


# -- routes --------------------------------------------------------------------------


def _walk(patterns, prefix=""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern)


def concrete(route: str) -> str:
    """A path the route matches: sample values for its parameters."""
    if route.startswith("^"):  # a regex route (the broker's catch-alls)
        route = route.strip("^$")
        for group in ("(?P<capability>llm|tts|stt|image)", "(?P<rest>.*)"):
            route = route.replace(group, "llm" if "capability" in group else "x")
    path = []
    for part in route.split("/"):
        if part.startswith("<int:"):
            part = "1"
        elif part.startswith("<"):
            part = "x"
        path.append(part)
    return "/" + "/".join(path)


def every_path() -> list[str]:
    """One concrete path per route of the URL configuration (a new route is included)."""
    return sorted({concrete(route) for route in _walk(get_resolver().url_patterns)})


def is_broker(path: str) -> bool:
    return path.startswith(("/v1/", "/audio/"))


# -- through the ASGI application ------------------------------------------------------


async def asgi_post(path: str, chunks: list[bytes], headers: list[tuple[bytes, bytes]]):
    """POST through `arbiter.asgi.application` (what daphne serves): status, headers, body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    communicator = ApplicationCommunicator(application, scope)
    for index, chunk in enumerate(chunks):
        more = index < len(chunks) - 1
        await communicator.send_input({"type": "http.request", "body": chunk, "more_body": more})
    start = await communicator.receive_output(timeout=20)
    body = b""
    while True:
        message = await communicator.receive_output(timeout=20)
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await communicator.wait(timeout=5)
    return start["status"], dict(start["headers"]), body


@pytest.fixture
def small_limits(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    settings.ARBITER_BROKER_MAX_BODY_BYTES = 2000
    return settings


def check_too_large(path: str, status: int, headers: dict, body: bytes) -> None:
    assert status == 413, (path, status, body[:200])
    assert headers[b"content-type"] == b"application/json"
    error = json.loads(body)["error"]
    if is_broker(path):  # the broker's OpenAI-shaped error
        assert (error["code"], error["limit_bytes"]) == ("request_too_large", 2000), path
    else:  # the API's one error shape
        assert (error["type"], error["field"], error["limit_bytes"]) == (
            "payload_too_large",
            "body",
            1000,
        ), path


@pytest.mark.parametrize("path", every_path())
async def test_it_answers_a_declared_oversized_body_with_the_json_413_on_every_route(
    small_limits, path
):
    limit = 2000 if is_broker(path) else 1000
    # Only the headers arrive: the answer comes without reading (or storing) the body.
    status, headers, body = await asgi_post(
        path, [b"x" * 10], [(b"content-length", str(limit + 1).encode())]
    )
    check_too_large(path, status, headers, body)


@pytest.mark.parametrize("path", ["/api/models", "/api/swap/lock", "/catalog/add/hub", "/v1/x"])
async def test_it_counts_and_refuses_an_oversized_body_without_a_length(small_limits, path):
    status, headers, body = await asgi_post(path, [b"x" * 600] * 5, [])
    check_too_large(path, status, headers, body)


@pytest.mark.parametrize("length", [b"1e9", b"\xb2", b"-1", b"9" * 400])
async def test_it_falls_back_to_counting_for_a_content_length_that_is_not_plain_digits(
    small_limits, length
):
    status, headers, body = await asgi_post(
        "/api/models", [b"x" * 1001], [(b"content-length", length)]
    )
    check_too_large("/api/models", status, headers, body)


async def test_it_never_spools_a_body_within_the_broker_limit_to_disk(
    monkeypatch, transactional_db
):
    """Django's ASGI handler spools bodies past FILE_UPLOAD_MAX_MEMORY_SIZE to a file;
    a body the limits accept (3 MB on /v1, over Django's 2.5 MB default) stays in memory."""
    spooled: list[tempfile.SpooledTemporaryFile] = []

    class Recording(tempfile.SpooledTemporaryFile):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            spooled.append(self)

        def close(self):  # keep the state to look at; the test's end frees it
            pass

    monkeypatch.setattr(django_asgi.tempfile, "SpooledTemporaryFile", Recording)
    body = b'{"model": "m", "pad": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    status, _headers, _body = await asgi_post(
        "/v1/chat/completions",
        [body],
        [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    )
    assert status == 401  # reached the broker, which authenticates first
    assert spooled and not any(f._rolled for f in spooled)


def test_it_has_upload_settings_that_keep_every_accepted_body_in_memory():
    assert django_settings.FILE_UPLOAD_HANDLERS == [
        "django.core.files.uploadhandler.MemoryFileUploadHandler"
    ]
    assert django_settings.FILE_UPLOAD_MAX_MEMORY_SIZE >= max(
        django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE, django_settings.ARBITER_BROKER_MAX_BODY_BYTES
    )


# -- through Django's own request handling (the test client) --------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("method", "path"),
    [("post", "/api/models"), ("put", "/api/models/x"), ("post", "/api/swap/lock")],
)
def test_it_answers_request_data_too_big_in_the_api_with_the_json_413(
    key_client, settings, method, path
):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = json.dumps({"key": "x", "pad": "x" * 2000})
    response = getattr(key_client, method)(path, body, content_type="application/json")
    assert response.status_code == 413, response.content
    assert response.json()["error"] == {
        "type": "payload_too_large",
        "message": "body: the request body is larger than the limit of 1000 bytes",
        "field": "body",
        "limit_bytes": 1000,
    }


@pytest.mark.django_db
def test_it_refuses_an_anonymous_oversized_body_before_it_is_parsed(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = json.dumps({"key": "x", "pad": "x" * 2000})
    response = Client().post("/api/models", body, content_type="application/json")
    assert response.status_code == 401


# -- /healthz and /readyz -------------------------------------------------------------


class BrokenConnection:
    def cursor(self):
        raise OperationalError(SECRET_DETAIL)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "module"), [("/healthz", "arbiter.views"), ("/readyz", "arbiter.broker.ops")]
)
def test_it_never_shows_the_database_error_on_the_health_routes(monkeypatch, caplog, path, module):
    monkeypatch.setattr(f"{module}.connection", BrokenConnection())
    response = Client().get(path)
    assert response.status_code == 503
    assert response.json()["database"] == "unavailable"
    assert "secret-volume" not in response.content.decode()
    assert SECRET_DETAIL in caplog.text  # the operator still finds it in the log


@pytest.mark.django_db
def test_it_hides_a_failure_after_the_first_query_on_readyz_too(monkeypatch):
    def broken(*args, **kwargs):
        raise OperationalError(SECRET_DETAIL)

    monkeypatch.setattr("arbiter.broker.ops._engine_readiness", broken)
    response = Client().get("/readyz")
    assert response.status_code == 503
    assert "secret-volume" not in response.content.decode()


# -- the data directory ----------------------------------------------------------------


def manage(data_dir: Path, *args: str) -> None:
    environment = {
        # The default a user's fresh machine gets: SQLite for the data and for huey's
        # queue (with REDIS_URL set, as in CI's PostgreSQL run, huey would use Redis and
        # never create huey.sqlite3).
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
        "ARBITER_DATA_DIR": str(data_dir),
    }
    subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), *args],
        env=environment,
        check=True,
        timeout=120,
        capture_output=True,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_it_makes_a_new_data_dir_0700_and_its_databases_0600(tmp_path):
    data_dir = tmp_path / "new" / "data"
    manage(data_dir, "migrate", "-v0")
    assert mode(data_dir) == 0o700
    database = data_dir / "arbiter.sqlite3"
    assert database.stat().st_size > 0  # migrated: the pre-created file became the database
    files = [database, data_dir / "huey.sqlite3", data_dir / "secret_key"]
    files += [p for p in data_dir.glob("*.sqlite3-*")]  # WAL and shared-memory files
    for path in files:
        assert mode(path) == 0o600, path


def test_it_tightens_an_existing_data_dir_and_database(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    database = data_dir / "arbiter.sqlite3"
    database.touch()
    database.chmod(0o644)
    manage(data_dir, "check")
    assert mode(data_dir) == 0o700
    assert mode(database) == 0o600


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/api/models",
            {"key": "q", "hub_repo": "Qwen/Qwen3-0.6B", "display_name": "a\ud800"},
            "display_name",
        ),
        (
            "/api/models",
            {"key": "q", "hub_repo": "Qwen/Qwen3-0.6B", "extra_args": ["--x=\udfff"]},
            "extra_args.0",
        ),
        ("/api/swap/lock", {"holder": "cron\ud83d", "ttl_seconds": 60}, "holder"),
        ("/api/schedule", {"id": "n", "cron": "0 * * * *", "meta": {"\udc00": 1}}, "meta.\udc00"),
        (
            "/api/webhooks",
            {"url": "https://hooks.example/x", "description": "d\udbff"},
            "description",
        ),
    ],
)
def test_it_refuses_a_lone_surrogate_with_a_422_naming_the_field_and_writes_nothing(
    admin_key_client, path, body, field
):
    # "\ud800" is valid JSON and Python decodes it, but it is no text: a database write
    # of it used to raise UnicodeEncodeError, a 500 (found by the SSH seam's fuzz test).
    from catalog.models import CatalogModel
    from coordination.models import SwapLock

    response = admin_key_client.post(path, json.dumps(body), content_type="application/json")
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert error["type"] == "validation_error"
    assert error["field"] == field
    assert not CatalogModel.objects.exists()
    assert not SwapLock.objects.filter(token_hash__gt="").exists()
