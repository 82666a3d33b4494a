"""Per-client accounting, Prometheus /metrics and /readyz."""

import json
import uuid
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from django.utils import timezone

from arbiter.broker.accounting import Accounting, client_name, client_usage
from arbiter.models import Host, Service
from coordination.locks import acquire
from tests.broker.conftest import chat, register

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def backend(start_backend, transactional_db):
    backend = start_backend("chat-model")
    register("vllm-a", backend.url, loaded_model="chat-model")
    return backend


async def post_chat(client, model="chat-model", **headers):
    return await client.post(
        "/v1/chat/completions", chat(model), "application/json", headers=headers
    )


async def test_it_counts_requests_per_client(aclient, backend):
    app = f"app-{uuid.uuid4().hex[:6]}"
    for _ in range(2):
        assert (await post_chat(aclient, **{"X-Client-Id": app})).status_code == 200
    assert (await post_chat(aclient, "nope", **{"X-Client-Id": app})).status_code == 404
    assert (await post_chat(aclient)).status_code == 200
    usage = {row["client"]: row for row in client_usage()}
    assert usage[app]["requests"] == 3
    assert usage[app]["errors"] == 1
    assert usage[app]["in_flight"] == 0
    assert usage[app]["by_model"] == {"chat-model": 2}  # unresolved names are not kept
    assert usage[app]["bytes_out"] > 0
    assert usage["key:broker tests"]["requests"] == 1

    metrics = (await aclient.get("/metrics")).content.decode()
    assert f'arbiter_broker_client_requests_total{{client="{app}"}} 3.0' in metrics


def test_it_validates_and_bounds_client_names() -> None:
    assert client_name("nightly-report.v2", "k") == "nightly-report.v2"
    assert client_name("bad id with spaces", "k") == "(invalid)"
    assert client_name("x" * 65, "k") == "(invalid)"
    assert client_name(None, "cron") == "key:cron"
    books = Accounting(max_clients=2)
    names = [books.started(f"c{i}") for i in range(4)]
    assert names == ["c0", "c1", "(other)", "(other)"]
    for name in names:
        books.finished(name, 200)
    assert {row["client"]: row["requests"] for row in books.usage()} == {
        "(other)": 2,
        "c0": 1,
        "c1": 1,
    }


async def test_it_requires_a_key_for_metrics_unless_they_are_made_public(
    aclient, backend, settings
):
    response = await AsyncClient().get("/metrics")
    assert response.status_code == 401
    assert json.loads(response.content)["error"]["type"] == "authentication_error"
    settings.ARBITER_METRICS_PUBLIC = True
    assert (await AsyncClient().get("/metrics")).status_code == 200


async def test_it_exposes_traffic_backends_swaps_and_the_lock_in_metrics(aclient, backend):
    assert (await post_chat(aclient)).status_code == 200
    await sync_to_async(acquire)("nightly-eval", 600, "eval")
    response = await aclient.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.content.decode()
    expected = [
        'arbiter_broker_requests_total{model="chat-model",route="/v1/chat/completions",'
        'status="200"}',
        'arbiter_broker_request_duration_seconds_bucket{le="0.005",route="/v1/chat/completions"}',
        'arbiter_broker_upstream_headers_seconds_count{route="/v1/chat/completions"}',
        'arbiter_broker_in_flight_requests{model="chat-model"} 0.0',
        "arbiter_broker_waiting_requests 0.0",
        'arbiter_backend_up{host="gpu-1",service="vllm-a"} 1.0',
        'arbiter_swaps{state="complete"} 0.0',
        "arbiter_swap_lock_held 1.0",
        'arbiter_swap_lock_holder{holder="nightly-eval"} 1.0',
        "arbiter_swap_lock_generation 1.0",
    ]
    for line in expected:
        assert line in text, line
    await Service.objects.filter(name="vllm-a").aupdate(health="down")
    text = (await aclient.get("/metrics")).content.decode()
    assert 'arbiter_backend_up{host="gpu-1",service="vllm-a"} 0.0' in text


async def test_it_needs_the_database_and_a_live_engine_for_readyz(transactional_db):
    client = AsyncClient()
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert json.loads(response.content)["engine"] == "nothing to watch"

    old = timezone.now() - timedelta(minutes=5)
    await Host.objects.acreate(name="gpu-1", address="127.0.0.1", last_attempt_at=old)
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert json.loads(response.content)["status"] == "not_ready"
    assert json.loads(response.content)["engine"] == "stale"

    await Host.objects.filter(name="gpu-1").aupdate(last_attempt_at=timezone.now())
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert json.loads(response.content) == {
        "status": "ready",
        "engine": "ok",
        "database": "ok",
        "engine_last_activity": json.loads(response.content)["engine_last_activity"],
    }
