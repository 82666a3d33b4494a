"""Inference keys in the broker: their model list (403, OpenAI-shaped) and their expiry,
which holds inside the broker's key cache too."""

import asyncio
import json
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from arbiter.models import ApiKey
from tests.broker.conftest import catalog_model, chat, register
from tests.helpers import KeyAsyncClient

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def backend(start_backend, transactional_db):
    backend = start_backend("chat-model", token_delay=0.0)
    register("vllm-a", backend.url, loaded_model="chat-model")
    catalog_model("chat", "chat-model")
    return backend


@sync_to_async
def make_key(**fields) -> tuple[ApiKey, str]:
    return ApiKey.objects.create_key(name="chat app", role="inference", **fields)


async def test_it_refuses_a_key_limited_to_models_with_403_for_another_model(
    aclient, backend, settings
):
    settings.ARBITER_BROKER_KEY_CACHE_SECONDS = 60
    _key, raw = await make_key(allowed_models=["chat"])  # the catalog key
    client = KeyAsyncClient(raw)
    # By served name: the same model as the catalog key the key lists.
    ok = await client.post("/v1/chat/completions", chat("chat-model"), "application/json")
    assert ok.status_code == 200
    refused = await client.post("/v1/chat/completions", chat("other-model"), "application/json")
    assert refused.status_code == 403
    error = json.loads(refused.content)["error"]
    assert error["param"] == "model" and error["code"] == "model_not_allowed"
    assert error["type"] == "permission_error" and "other-model" in error["message"]
    assert backend.requests() == 1
    # A key without a list may use any model.
    ok = await aclient.post("/v1/chat/completions", chat("other-model"), "application/json")
    assert ok.status_code != 403


async def test_it_refuses_an_expired_key_even_while_it_is_cached(aclient, backend, settings):
    settings.ARBITER_BROKER_KEY_CACHE_SECONDS = 600
    _key, raw = await make_key(expires_at=timezone.now() + timedelta(seconds=1))
    client = KeyAsyncClient(raw)
    assert (await client.get("/v1/models")).status_code == 200  # now cached for 600 s
    await asyncio.sleep(1.2)
    response = await client.get("/v1/models")
    assert response.status_code == 401
    assert json.loads(response.content)["error"]["code"] == "invalid_api_key"


async def test_it_refuses_an_already_expired_key(aclient, backend):
    _key, raw = await make_key(expires_at=timezone.now() - timedelta(minutes=1))
    response = await KeyAsyncClient(raw).get("/v1/models")
    assert response.status_code == 401
