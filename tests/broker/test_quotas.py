"""Quotas per API key in the broker: requests per minute and tokens per UTC day (429 naming
the limit, with Retry-After), counted in the database that every broker process shares;
and `/v1/models` as a key limited to models sees it."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from datetime import timedelta

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.utils import timezone

from arbiter.broker import quotas
from arbiter.models import ApiKey, KeyUsage
from tests.broker.conftest import catalog_model, chat, register
from tests.helpers import KeyAsyncClient

pytestmark = pytest.mark.django_db(transaction=True)

JSON = "application/json"


@pytest.fixture
def backend(start_backend, transactional_db):
    backend = start_backend("chat-model", token_delay=0.0)
    register("vllm-a", backend.url, loaded_model="chat-model")
    catalog_model("chat", "chat-model")
    return backend


@sync_to_async
def make_key(name: str = "app1", **fields) -> tuple[ApiKey, str]:
    return ApiKey.objects.create_key(name=name, role="inference", **fields)


@sync_to_async
def usage_rows(key: ApiKey, period: str) -> list[tuple[int, int]]:
    return list(KeyUsage.objects.filter(key=key, period=period).values_list("requests", "tokens"))


async def early_in_a_minute() -> None:
    """Start a per-minute test with at least 10 s of the minute left, so its requests all
    fall in one minute."""
    second = timezone.now().second
    if second >= 50:
        await asyncio.sleep(60.5 - second)


async def day_tokens(key: ApiKey, expected_requests: int) -> int:
    """Today's tokens once `expected_requests` answers are counted (written after them)."""
    deadline = time.monotonic() + 10
    while True:
        rows = await usage_rows(key, KeyUsage.DAY)
        if rows and rows[0][0] >= expected_requests:
            return rows[0][1]
        assert time.monotonic() < deadline, f"tokens not counted: {rows}"
        await asyncio.sleep(0.05)


async def test_it_answers_429_naming_the_limit_past_a_keys_requests_per_minute(aclient, backend):
    key, raw = await make_key(requests_per_minute=3)
    client = KeyAsyncClient(raw)
    await early_in_a_minute()
    for _ in range(3):
        ok = await client.post("/v1/chat/completions", chat("chat-model"), JSON)
        assert ok.status_code == 200, ok.content
    refused = await client.post("/v1/chat/completions", chat("chat-model"), JSON)
    assert refused.status_code == 429
    error = json.loads(refused.content)["error"]
    assert error["type"] == "rate_limit_exceeded" and error["code"] == "rate_limit_exceeded"
    assert error["param"] == "requests_per_minute" and error["limit"] == 3
    assert "requests_per_minute limit of 3 reached for key 'app1'" in error["message"]
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert backend.requests() == 3  # the refused request was not forwarded
    assert await usage_rows(key, KeyUsage.MINUTE) == [(3, 0)]  # nor counted


async def test_it_does_no_quota_work_for_a_key_without_limits(aclient, backend, monkeypatch):
    def no_quota_work(*args):
        raise AssertionError("a key without limits reached the quota check")

    monkeypatch.setattr(quotas, "check_async", no_quota_work)
    for _ in range(5):
        ok = await aclient.post("/v1/chat/completions", chat("chat-model"), JSON)
        assert ok.status_code == 200, ok.content
    assert backend.requests() == 5
    assert not await sync_to_async(KeyUsage.objects.exists)()


async def test_it_counts_the_answers_usage_against_tokens_per_day(aclient, backend):
    key, raw = await make_key(tokens_per_day=10)
    client = KeyAsyncClient(raw)
    first = await client.post("/v1/chat/completions", chat("chat-model", max_tokens=4), JSON)
    assert first.status_code == 200
    used = json.loads(first.content)["usage"]["total_tokens"]
    assert 4 < used < 10
    assert await day_tokens(key, 1) == used
    second = await client.post("/v1/chat/completions", chat("chat-model", max_tokens=4), JSON)
    assert second.status_code == 200  # under the limit when it was sent
    assert await day_tokens(key, 2) == 2 * used >= 10
    refused = await client.post("/v1/chat/completions", chat("chat-model"), JSON)
    assert refused.status_code == 429
    error = json.loads(refused.content)["error"]
    assert error["param"] == "tokens_per_day"
    assert "tokens_per_day limit of 10 reached for key 'app1'" in error["message"]
    midnight = (timezone.now() + timedelta(days=1)).replace(hour=0, minute=0, second=0)
    assert abs(int(refused["Retry-After"]) - (midnight - timezone.now()).total_seconds()) < 5
    assert backend.requests() == 2


async def test_it_counts_one_token_per_content_chunk_of_a_stream_without_usage(aclient, backend):
    key, raw = await make_key(tokens_per_day=1000)
    client = KeyAsyncClient(raw)
    body = chat("chat-model", max_tokens=7, stream=True)
    response = await client.post("/v1/chat/completions", body, JSON)
    assert response.status_code == 200
    text = b"".join([chunk async for chunk in response.streaming_content])
    assert text.count(b"data: ") == 8  # 7 tokens and [DONE]
    assert await day_tokens(key, 1) == 7


def sse_answer(events: list[bytes]) -> bytes:
    body = b"".join(b"data: " + event + b"\n\n" for event in events)
    # Chunk boundaries inside events: the counter must join the lines itself.
    chunks = [body[i : i + 13] for i in range(0, len(body), 13)]
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    return head + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


async def test_it_counts_what_a_streams_final_usage_chunk_says(aclient, scripted, transactional_db):
    delta = {"choices": [{"index": 0, "delta": {"content": "hi"}}]}
    final = {"choices": [], "usage": {"prompt_tokens": 30, "total_tokens": 42}}
    events = [json.dumps(delta).encode()] * 3 + [json.dumps(final).encode(), b"[DONE]"]
    backend = await scripted([sse_answer(events)])
    await sync_to_async(register)("scripted", backend.url, loaded_model="scripted-model")
    key, raw = await make_key(tokens_per_day=1000)
    response = await KeyAsyncClient(raw, **{"Accept-Encoding": "gzip"}).post(
        "/v1/chat/completions", chat("scripted-model", stream=True), JSON
    )
    assert response.status_code == 200
    assert b"[DONE]" in b"".join([chunk async for chunk in response.streaming_content])
    assert await day_tokens(key, 1) == 42
    # A compressed answer could not be read: the backend is not asked for one.
    assert b"accept-encoding" not in backend.requests[0].lower()


async def test_it_shows_a_key_limited_to_models_only_those_in_v1_models(aclient, backend):
    await sync_to_async(catalog_model)("other", "other-model")
    _key, raw = await make_key(allowed_models=["chat"])  # the catalog key
    limited = json.loads((await KeyAsyncClient(raw).get("/v1/models")).content)
    assert [m["id"] for m in limited["data"]] == ["chat-model"]
    _key, raw = await make_key("by served name", allowed_models=["other-model"])
    limited = json.loads((await KeyAsyncClient(raw).get("/v1/models")).content)
    assert [m["id"] for m in limited["data"]] == ["other-model"]
    everything = json.loads((await aclient.get("/v1/models")).content)
    assert {m["id"] for m in everything["data"]} == {"chat-model", "other-model"}


async def test_it_refuses_a_bad_body_before_the_quota_counts_it(aclient, backend):
    key, raw = await make_key(requests_per_minute=2)
    client = KeyAsyncClient(raw)
    await early_in_a_minute()
    bad = await client.post("/v1/chat/completions", b"{not json", JSON)
    assert bad.status_code == 400
    assert await usage_rows(key, KeyUsage.MINUTE) == []


# -- many requests at once ------------------------------------------------------------------
def test_it_forwards_exactly_7_of_20_concurrent_requests_against_a_limit_of_7(
    broker_server, start_backend
):
    backend = start_backend("chat-model", token_delay=0.05)
    register("vllm-a", backend.url, loaded_model="chat-model")
    _key, raw = ApiKey.objects.create_key(name="burst", role="inference", requests_per_minute=7)
    if timezone.now().second >= 50:
        time.sleep(60.5 - timezone.now().second)

    async def burst() -> list[int]:
        headers = {"Authorization": f"Bearer {raw}"}
        async with httpx.AsyncClient(base_url=broker_server.url, timeout=30) as client:
            answers = await asyncio.gather(
                *(
                    client.post("/v1/chat/completions", json=chat("chat-model"), headers=headers)
                    for _ in range(20)
                )
            )
        return [answer.status_code for answer in answers]

    statuses = asyncio.run(burst())
    assert sorted(statuses) == [200] * 7 + [429] * 13
    assert backend.requests() == 7


@pytest.mark.skipif(
    not os.environ.get("DATABASE_URL"),
    reason="needs PostgreSQL: set DATABASE_URL (`make test-postgres` does; CI runs it)",
)
def test_it_keeps_the_count_exact_across_database_connections():
    """20 threads, each with its own PostgreSQL connection, take a request against a limit
    of 7 at the same moment, for a minute whose row does not exist yet: exactly 7 win."""
    assert connection.vendor == "postgresql"
    key, _raw = ApiKey.objects.create_key(name="race", role="inference", requests_per_minute=7)
    for round_ in range(5):
        minute = timezone.now().replace(second=0, microsecond=0) + timedelta(minutes=round_ + 1)
        results = race(key.pk, minute, 20)
        assert results.count(True) == 7, (round_, results)
        assert KeyUsage.objects.get(key=key, starts_at=minute).requests == 7


def race(key_id: int, minute, threads: int) -> list[bool]:
    start = threading.Barrier(threads)
    results: list[bool] = []

    def take() -> None:
        try:
            start.wait()
            results.append(quotas.take_request(key_id, 7, minute))
        finally:
            connection.close()

    running = [threading.Thread(target=take) for _ in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    return results
