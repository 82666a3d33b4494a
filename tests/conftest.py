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


@pytest.fixture(autouse=True)
def _own_broker_redis_keys(settings):
    """Each test's broker keys in Redis (limits, in-flight, client counts) under a prefix
    of its own. Without it a test read what earlier ones left under the default prefix,
    which is named after the test database: the three-process ship tests' serve
    processes leave their client counts there, and the dashboard's clients test then
    saw "key:broker-processes-test" first (CI, PostgreSQL + Redis). No effect without
    REDIS_URL."""
    import uuid

    settings.ARBITER_BROKER_REDIS_PREFIX = f"arbiter-test:{uuid.uuid4().hex}:"


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each test gets its own channel layer instance. channels_redis gives every
    process-local channel of one instance a single Redis list (its client prefix) and
    counts the channel capacity (100) on that list: a test that joined a group and never
    read left up to 100 fragments there for 60 s, and the next test's new channels on the
    shared instance had their messages dropped ("channels over capacity"), so its
    `receive` timed out (CI, PostgreSQL + Redis). A fresh instance has a fresh prefix.
    The in-memory layer is unaffected either way."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def alice(db, django_user_model):
    """Alice runs the cluster: staff and superuser."""
    return django_user_model.objects.create_superuser("alice", "alice@example.com", "alice-pw-1")


@pytest.fixture
def bob(db, django_user_model):
    """Bob can log in and watch, but is not staff."""
    return django_user_model.objects.create_user("bob", "bob@example.com", "bob-pw-1")


def grant(user, role: str):
    """Put a person in a role's group (viewer, operator, admin; arbiter.roles)."""
    from django.contrib.auth.models import Group

    user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user


@pytest.fixture
def operator_bob(bob):
    """Bob in the operator group: swaps, the lock, the catalog, schedules."""
    return grant(bob, "operator")


@pytest.fixture
def alice_client(alice) -> Client:
    """A browser session logged in as Alice."""
    client = Client()
    client.force_login(alice)
    return client


@pytest.fixture
def admin_person(bob) -> Client:
    """A browser session logged in as Bob in the admin group."""
    client = Client()
    client.force_login(grant(bob, "admin"))
    return client


@pytest.fixture
def api_key(db) -> str:
    """A raw API key (as the cron job would hold it); role operator, the default."""
    _key, raw_key = ApiKey.objects.create_key(name="nightly cron")
    return raw_key


@pytest.fixture
def key_client(api_key) -> Client:
    """A client that authenticates with `Authorization: Bearer <key>`."""
    return Client(headers={"Authorization": f"Bearer {api_key}"})


@pytest.fixture
def admin_key(db) -> str:
    """A raw API key with the admin role (inventory, webhooks)."""
    _key, raw_key = ApiKey.objects.create_key(name="admin automation", role=ApiKey.ROLE_ADMIN)
    return raw_key


@pytest.fixture
def admin_key_client(admin_key) -> Client:
    return Client(headers={"Authorization": f"Bearer {admin_key}"})


@pytest.fixture
def csrf_client() -> Client:
    """A client that enforces CSRF like a real browser session would."""
    return Client(enforce_csrf_checks=True)
