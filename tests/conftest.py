"""Shared fixtures: a small named cast of users, an API key, and the simulated cluster."""

import pytest
from django.test import Client

from arbiter.models import ApiKey

pytest_plugins = ["tests.sim_fixtures", "tests.live_arbiter"]


@pytest.fixture(autouse=True)
def _close_async_test_connections():
    """Async tests reach the ORM through sync_to_async's one shared thread; close its
    connection afterwards so PostgreSQL can drop the test database at the end."""
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)


@pytest.fixture
def alice(db, django_user_model):
    """Alice runs the cluster: staff and superuser."""
    return django_user_model.objects.create_superuser("alice", "alice@example.com", "alice-pw-1")


@pytest.fixture
def bob(db, django_user_model):
    """Bob can log in and watch, but is not staff."""
    return django_user_model.objects.create_user("bob", "bob@example.com", "bob-pw-1")


@pytest.fixture
def api_key(db) -> str:
    """A raw API key (as the cron job would hold it)."""
    _key, raw_key = ApiKey.objects.create_key(name="nightly cron")
    return raw_key


@pytest.fixture
def key_client(api_key) -> Client:
    """A client that authenticates with `Authorization: Bearer <key>`."""
    return Client(headers={"Authorization": f"Bearer {api_key}"})


@pytest.fixture
def csrf_client() -> Client:
    """A client that enforces CSRF like a real browser session would."""
    return Client(enforce_csrf_checks=True)
