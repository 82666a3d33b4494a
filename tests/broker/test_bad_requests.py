"""Bad input gets the right status and one OpenAI-shaped error, and never reaches a backend."""

import asyncio
import json

import pytest
from django.utils import timezone

from arbiter.models import ApiKey
from tests.broker.conftest import chat, register
from tests.helpers import KeyAsyncClient

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def backend(start_backend, transactional_db):
    backend = start_backend("chat-model", token_delay=0.02)
    register("vllm-a", backend.url, loaded_model="chat-model")
    return backend


def error_of(response) -> dict:
    body = json.loads(response.content)
    assert set(body) == {"error"}
    assert {"type", "message"} <= set(body["error"])
    return body["error"]


async def test_it_requires_an_api_key(aclient, backend):
    anonymous = KeyAsyncClient("arb_nope_nope")
    anonymous.default.pop("Authorization")
    response = await anonymous.post("/v1/chat/completions", chat("chat-model"), "application/json")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="arbiter"'
    assert error_of(response)["code"] == "invalid_api_key"
    response = await KeyAsyncClient("arb_0000_wrong").get("/v1/models")
    assert response.status_code == 401
    assert "valid Arbiter API key" in error_of(response)["message"]
    assert backend.requests() == 0


async def test_it_refuses_a_body_over_the_limit_with_413(aclient, backend, settings):
    settings.ARBITER_BROKER_MAX_BODY_BYTES = 1000
    body = chat("chat-model", padding="x" * 2000)
    response = await aclient.post("/v1/chat/completions", body, "application/json")
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "request_too_large" and error["limit_bytes"] == 1000
    # Just under the limit goes through.
    response = await aclient.post("/v1/chat/completions", chat("chat-model"), "application/json")
    assert response.status_code == 200
    assert backend.requests() == 1


async def test_it_refuses_a_non_json_body_on_a_json_route(aclient, backend):
    response = await aclient.post("/v1/chat/completions", "model=chat-model", "text/plain")
    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"
    response = await aclient.post("/v1/chat/completions", "{not json", "application/json")
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_json"
    response = await aclient.post("/v1/embeddings", "[1, 2]", "application/json")
    assert response.status_code == 400
    response = await aclient.post("/v1/chat/completions", {"messages": []}, "application/json")
    assert response.status_code == 400
    assert error_of(response)["param"] == "model"
    response = await aclient.post("/v1/chat/completions", {"model": 7}, "application/json")
    assert response.status_code == 400
    assert backend.requests() == 0


async def test_it_takes_the_transcription_model_from_the_multipart_form(aclient, backend):
    boundary = "XyZ"
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\nRIFF....\r\n"
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="model"\r\n\r\nwhisper-9\r\n'
        f"--{boundary}--\r\n"
    )
    response = await aclient.post(
        "/v1/audio/transcriptions", body, f"multipart/form-data; boundary={boundary}"
    )
    assert response.status_code == 404
    assert "whisper-9" in error_of(response)["message"]
    response = await aclient.post("/v1/audio/transcriptions", "{}", "application/json")
    assert response.status_code == 415


async def test_it_refuses_wrong_methods_with_405_and_unknown_routes_with_404(aclient, backend):
    response = await aclient.get("/v1/chat/completions")
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    response = await aclient.post("/v1/nothing/here", {}, "application/json")
    assert response.status_code == 404
    assert error_of(response)["code"] == "unknown_url"


async def test_it_answers_429_past_the_per_model_concurrency_limit(aclient, backend, settings):
    settings.ARBITER_BROKER_MAX_CONCURRENCY = 2
    body = chat("chat-model", stream=True, max_tokens=20)
    # Two streams in flight (their bodies not read yet: the slots stay taken).
    streams = [await aclient.post("/v1/chat/completions", body, "application/json") for _ in "ab"]
    assert [s.status_code for s in streams] == [200, 200]
    response = await aclient.post("/v1/chat/completions", chat("chat-model"), "application/json")
    assert response.status_code == 429
    assert response["Retry-After"] == "1"
    error = error_of(response)
    assert error["type"] == "rate_limit_exceeded" and error["code"] == "concurrency_limit"
    for stream in streams:
        text = b"".join([chunk async for chunk in stream.streaming_content])
        assert text.endswith(b"data: [DONE]\n\n")
    response = await aclient.post("/v1/chat/completions", chat("chat-model"), "application/json")
    assert response.status_code == 200


async def test_it_passes_all_concurrent_requests_under_the_limit(aclient, backend, settings):
    settings.ARBITER_BROKER_MAX_CONCURRENCY = 8
    body = chat("chat-model", max_tokens=5)
    responses = await asyncio.gather(
        *(aclient.post("/v1/chat/completions", body, "application/json") for _ in range(8))
    )
    assert [r.status_code for r in responses] == [200] * 8


async def test_it_records_key_use_and_refuses_a_revoked_key(aclient, backend, settings):
    settings.ARBITER_BROKER_KEY_CACHE_SECONDS = 0  # no grace: revocation applies at once
    response = await aclient.get("/v1/models")
    assert response.status_code == 200
    for _ in range(50):  # recorded off the request's path
        if await ApiKey.objects.filter(last_used_at__isnull=False).aexists():
            break
        await asyncio.sleep(0.05)
    assert await ApiKey.objects.filter(last_used_at__isnull=False).aexists()
    await ApiKey.objects.aupdate(revoked_at=timezone.now())
    assert (await aclient.get("/v1/models")).status_code == 401
