"""A backend that failed its last probe is refused at once; one being swapped is waited for."""

import asyncio
import json
import time

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from arbiter.models import Service, Swap
from tests.broker.conftest import catalog_model, chat, register

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def backend(start_backend, transactional_db):
    backend = start_backend("chat-model")
    register("vllm-a", backend.url, loaded_model="chat-model")
    return backend


async def post_chat(client, model="chat-model"):
    return await client.post("/v1/chat/completions", chat(model), "application/json")


async def test_it_refuses_a_down_backend_with_503_at_once_without_an_upstream_attempt(
    aclient, backend
):
    assert (await post_chat(aclient)).status_code == 200  # warm: key verified, pool open
    since = timezone.now().replace(microsecond=0)
    await Service.objects.filter(name="vllm-a").aupdate(health="down", health_since=since)
    before = backend.requests()

    started = time.perf_counter()
    response = await post_chat(aclient)
    elapsed = time.perf_counter() - started

    assert response.status_code == 503
    # "At once": well under one upstream attempt (a connect alone may take seconds); the
    # bound leaves room for a loaded CI machine (it once took 51 ms against 50).
    assert elapsed < 0.25, f"503 took {elapsed * 1000:.1f} ms"
    assert response["Retry-After"] == "5"
    error = json.loads(response.content)["error"]
    assert error["type"] == "backend_unavailable"
    assert error["service"] == "vllm-a"
    assert error["since"] == since.isoformat()
    assert error["code"] == "backend_down"
    assert backend.requests() == before  # no upstream attempt


async def test_it_answers_503_for_a_backend_that_refuses_connections_too(aclient, backend):
    backend.stop()  # the prober has not noticed yet: still "up" in the database
    response = await post_chat(aclient)
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    error = json.loads(response.content)["error"]
    assert (error["type"], error["code"], error["service"]) == (
        "backend_unavailable",
        "connect_failed",
        "vllm-a",
    )


@sync_to_async
def swap_on(service_name: str, state: str = Swap.LAUNCHING) -> int:
    service = Service.objects.select_related("host").get(name=service_name)
    model = catalog_model("chat", "chat-model")
    swap = Swap.objects.create(
        model=model, model_key=model.key, host=service.host, service=service, state=state
    )
    return swap.pk


async def test_it_makes_requests_for_a_backend_being_swapped_wait_for_the_swap(aclient, backend):
    swap_id = await swap_on("vllm-a")
    waiting = asyncio.ensure_future(post_chat(aclient))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    assert backend.requests() == 0
    finished = timezone.now()
    await Swap.objects.filter(pk=swap_id).aupdate(state=Swap.COMPLETE, finished_at=finished)
    response = await asyncio.wait_for(waiting, 5)
    assert response.status_code == 200, response.content
    assert backend.requests() == 1


async def test_it_answers_503_with_retry_after_when_a_swap_takes_too_long(
    aclient, backend, settings
):
    settings.ARBITER_BROKER_QUEUE_TIMEOUT = 0.3
    swap_id = await swap_on("vllm-a")
    started = time.perf_counter()
    response = await post_chat(aclient)
    assert 0.3 <= time.perf_counter() - started < 2
    assert response.status_code == 503
    assert response["Retry-After"] == "10"
    error = json.loads(response.content)["error"]
    assert (error["type"], error["code"], error["swap_id"]) == (
        "server_busy",
        "swap_timeout",
        swap_id,
    )


async def test_it_bounds_the_wait_queue(aclient, backend, settings):
    settings.ARBITER_BROKER_QUEUE_SIZE = 2
    settings.ARBITER_BROKER_QUEUE_TIMEOUT = 5
    swap_id = await swap_on("vllm-a")
    waiting = [asyncio.ensure_future(post_chat(aclient)) for _ in range(2)]
    await asyncio.sleep(0.3)
    response = await post_chat(aclient)
    assert response.status_code == 503
    assert response["Retry-After"] == "10"
    assert json.loads(response.content)["error"]["code"] == "queue_full"
    await Swap.objects.filter(pk=swap_id).aupdate(state=Swap.COMPLETE, finished_at=timezone.now())
    assert [r.status_code for r in await asyncio.gather(*waiting)] == [200, 200]
