"""Ready means it answers: a swap is complete only after one tiny real request succeeded.

The simulated vLLM counts the inference requests it received (`sim_requests_total` on
its /metrics) and prints uvicorn's access line for each, so these tests see the request
arrive at the model, not only our log."""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from asgiref.sync import sync_to_async

from arbiter.engine.swaps.ready_check import check_ready
from arbiter.models import Service
from tests.swaps.conftest import log_lines, make_model, start_swap, wait_for_state

pytestmark = pytest.mark.django_db(transaction=True)
FINAL = ["complete", "failed", "cancelled"]


def requests_served(base_url: str) -> int:
    metrics = httpx.get(f"{base_url}/metrics", timeout=5).text
    return int(float(re.search(r"^sim_requests_total\S* (\S+)$", metrics, re.M).group(1)))


def posts_received(cluster) -> list[str]:
    """The POST paths the container on sim-b logged (uvicorn's access lines)."""
    container = cluster.container("sim-b", "arbiter-vllm")
    stdout_path, _ = cluster.hosts["sim-b"].daemon.log_paths(container)
    return re.findall(r'"POST (\S+) HTTP/1.1"', stdout_path.read_text())


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
    assert posts_received(cluster) == ["/v1/completions"]


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
    # The model was asked exactly once, and said so in its own log, as vLLM does.
    assert posts_received(cluster) == ["/v1/completions"]
    assert any(
        "failed with an internal error during generation" in line
        for line in await log_lines(done.pk, "stdout")
    )


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
    # The container received one embedding request and no completion.
    assert posts_received(cluster) == ["/v1/embeddings"]
    assert requests_served(await base_url()) == 1


async def test_it_checks_a_speech_model_with_speech(cluster, dispatcher, aclient):
    await sync_to_async(make_model)("speaker", hub_repo="canopylabs/orpheus-3b-0.1-ft", kind="tts")

    done = await swap(aclient, "speaker")

    assert done.state == "complete", done.error
    assert posts_received(cluster) == ["/v1/audio/speech"]


class ErrorIn200(BaseHTTPRequestHandler):
    """Answers 200 with vLLM's error body, as vLLM did for /v1/embeddings on a
    generative model (vllm-project/vllm#21704)."""

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        error = {"message": "The model does not support Embeddings API", "type": "BadRequestError"}
        body = json.dumps({"error": {**error, "param": None, "code": 400}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


async def test_it_fails_a_200_whose_body_is_vllms_error():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ErrorIn200)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        async with httpx.AsyncClient(trust_env=False) as client:
            url = f"http://127.0.0.1:{server.server_address[1]}"
            result = await check_ready(client, url, "embeddings", "bge-small", {}, 5.0)
    finally:
        server.shutdown()
        server.server_close()

    assert not result.ok
    assert re.fullmatch(
        r"ready check: POST /v1/embeddings \(embedding of one word\) answered 200 in \d+ ms "
        r"with an error body: BadRequestError: The model does not support Embeddings API",
        result.summary,
    ), result.summary
