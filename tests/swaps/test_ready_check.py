"""Ready means it answers: a swap is complete only after one tiny real request succeeded.

The simulated vLLM counts the inference requests it received (`sim_requests_total` on
its /metrics), so these tests see the request arrive at the model, not only our log."""

import re

import httpx
import pytest
from asgiref.sync import sync_to_async

from arbiter.models import Service
from tests.swaps.conftest import log_lines, make_model, start_swap, wait_for_state

pytestmark = pytest.mark.django_db(transaction=True)
FINAL = ["complete", "failed", "cancelled"]


def requests_served(base_url: str) -> int:
    metrics = httpx.get(f"{base_url}/metrics", timeout=5).text
    return int(float(re.search(r"^sim_requests_total\S* (\S+)$", metrics, re.M).group(1)))


async def base_url() -> str:
    return await sync_to_async(lambda: Service.objects.get(name="sim-b-vllm").base_url)()


async def swap(aclient, model: str):
    response = await start_swap(aclient, model)
    assert response.status_code == 202, response.content
    return await wait_for_state(response.json()["id"], FINAL)


async def test_it_sends_a_one_token_completion_before_the_swap_is_complete(
    cluster, dispatcher, aclient
):
    done = await swap(aclient, "qwen3-small")

    assert done.state == "complete", done.error
    lines = await log_lines(done.pk)
    [check] = [line for line in lines if line.startswith("ready check:")]
    assert re.fullmatch(
        r"ready check: POST /v1/completions \(1-token completion\) answered 200 in \d+ ms", check
    ), check
    # It came before the completion, and the model received exactly that one request.
    assert lines.index(check) < len(lines) - 1
    assert requests_served(await base_url()) == 1


async def test_it_fails_a_swap_whose_model_is_listed_but_cannot_answer(
    cluster, dispatcher, aclient
):
    cluster.inject("sim-b", bad_completion=True)

    done = await swap(aclient, "qwen3-small")

    assert done.state == "failed"
    # The backend's own answer: vLLM's 500 with its error type and message.
    assert "is listed by /v1/models but does not answer" in done.error
    assert "answered 500" in done.error
    assert "InternalServerError: Internal server error" in done.error
    assert "container arbiter-vllm stopped" in done.error
    states = {c.name: c.status for c in cluster.containers("sim-b")}
    assert not states["arbiter-vllm"].startswith("running"), states


async def test_it_checks_an_embeddings_model_with_an_embedding(cluster, dispatcher, aclient):
    await sync_to_async(make_model)(
        "embedder",
        hub_repo="BAAI/bge-small-en-v1.5",
        kind="embeddings",
        served_name="bge-small",
    )

    done = await swap(aclient, "embedder")

    assert done.state == "complete", done.error
    lines = await log_lines(done.pk)
    assert any(
        line.startswith("ready check: POST /v1/embeddings (embedding of one word) answered 200")
        for line in lines
    ), lines
    assert requests_served(await base_url()) == 1
