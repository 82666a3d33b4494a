"""/healthz, JSON errors for unknown routes, the first admin, settings helpers."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from arbiter.management.commands.serve import ensure_first_admin
from arbiter.settings import env

pytestmark = pytest.mark.django_db
BASE_DIR = Path(__file__).resolve().parents[2]


def test_it_answers_healthz_anonymously():
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_it_answers_unknown_routes_with_the_json_error_shape():
    response = Client().get("/no/such/page")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


def test_it_lists_endpoints_with_their_disabled_flag(key_client, alice):
    from arbiter.models import Host, Service

    host = Host.objects.create(name="spark-1", address="10.0.0.1")
    Service.objects.create(name="tts", host=host, base_url="http://10.0.0.1:9000", disabled=True)
    Service.objects.create(name="llm", host=host, base_url="http://10.0.0.1:8000")
    endpoints = {e["name"]: e for e in key_client.get("/api/endpoints").json()}
    assert endpoints["tts"]["disabled"] is True
    assert endpoints["llm"]["disabled"] is False
    status = key_client.get("/api/status").json()
    assert [s["name"] for s in status["services"]] == ["llm"]  # disabled: no tile


def test_it_creates_the_first_admin_once(django_user_model):
    password = ensure_first_admin()
    assert password and len(password) >= 12
    assert django_user_model.objects.get(username="admin").check_password(password)
    assert ensure_first_admin() is None


def test_it_leaves_existing_admins_alone(alice, django_user_model):
    assert ensure_first_admin() is None
    assert not django_user_model.objects.filter(username="admin").exists()


def test_it_supports_createsuperuser_noinput(tmp_path):
    environment = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)},
        "ARBITER_DATA_DIR": str(tmp_path),
        "DJANGO_SUPERUSER_USERNAME": "ops",
        "DJANGO_SUPERUSER_PASSWORD": "a-long-password-1",
        "DJANGO_SUPERUSER_EMAIL": "ops@example.com",
    }
    manage = [sys.executable, str(BASE_DIR / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=environment, check=True, timeout=120)
    done = subprocess.run(
        [*manage, "createsuperuser", "--noinput"], env=environment, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Superuser created successfully" in done.stdout


def test_it_reads_secrets_from_files(tmp_path, monkeypatch):
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("SOME_SECRET_FILE", str(secret))
    monkeypatch.setenv("SOME_SECRET", "from-the-environment")
    assert env("SOME_SECRET") == "from-a-file"


def test_it_lists_swaps_in_flight_in_the_status(key_client):
    from arbiter.models import Host, Swap

    host = Host.objects.create(name="spark-1", address="10.0.0.1")
    running = Swap.objects.create(model_key="qwen", host=host, state=Swap.LAUNCHING)
    Swap.objects.create(model_key="old", host=host, state=Swap.COMPLETE)
    swaps = key_client.get("/api/status").json()["swaps"]
    assert [(s["id"], s["model"], s["host"], s["state"]) for s in swaps] == [
        (running.pk, "qwen", "spark-1", "launching")
    ]


def test_it_shows_the_lock_in_the_status_without_its_token(key_client):
    from coordination.locks import acquire

    grant = acquire("nightly-eval", 60, "reserved")
    response = key_client.get("/api/status")
    lock = response.json()["lock"]
    assert lock["held"] is True
    assert lock["holder"] == "nightly-eval"
    assert lock["generation"] == grant.generation
    assert grant.token not in response.content.decode()
