"""Routing through the broker to real simulated backends: by model, by capability, /audio."""

import json

import pytest
from asgiref.sync import sync_to_async

from arbiter.models import Service
from tests.broker.conftest import catalog_model, chat, register

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def two_models(start_backend, transactional_db):
    """Two vLLM backends on two hosts, each serving its own model; a TTS http service."""
    first = start_backend("alpha-chat")
    second = start_backend("beta-embed", kind="embeddings")
    tts = start_backend("tts-voice", kind="tts")
    register("vllm-alpha", first.url, loaded_model="alpha-chat")
    register(
        "vllm-beta",
        second.url,
        host="gpu-2",
        loaded_model="beta-embed",
        capabilities=("embeddings",),
        request_paths=("/v1/embeddings",),
    )
    register(
        "tts",
        tts.url,
        host="gpu-2",
        kind="http",
        capabilities=("tts", "audio"),
        request_paths=("/v1/audio/speech",),
    )
    return first, second, tts


async def post_json(client, path, body, **kw):
    return await client.post(path, body, content_type="application/json", **kw)


async def test_it_routes_each_model_to_the_service_that_serves_it(aclient, two_models):
    first, second, _tts = two_models
    response = await post_json(aclient, "/v1/chat/completions", chat("alpha-chat"))
    assert response.status_code == 200, response.content
    assert response["X-Arbiter-Service"] == "vllm-alpha"
    body = json.loads(response.content)
    assert body["model"] == "alpha-chat"
    assert body["choices"][0]["message"]["content"].startswith("Simulated reply from alpha-chat")

    response = await post_json(aclient, "/v1/completions", {"model": "alpha-chat", "prompt": "x"})
    assert response.status_code == 200
    assert json.loads(response.content)["object"] == "text_completion"

    response = await post_json(aclient, "/v1/embeddings", {"model": "beta-embed", "input": "hi"})
    assert response.status_code == 200, response.content
    assert response["X-Arbiter-Service"] == "vllm-beta"
    assert len(json.loads(response.content)["data"][0]["embedding"]) == 16
    assert first.requests() == 2 and second.requests() == 1


async def test_it_routes_a_catalog_key_to_its_served_model(aclient, two_models):
    await sync_to_async(catalog_model)("alpha", "alpha-chat")
    response = await post_json(aclient, "/v1/chat/completions", chat("alpha"))
    assert response.status_code == 200, response.content
    assert response["X-Arbiter-Service"] == "vllm-alpha"


async def test_it_sends_speech_to_the_http_service_that_declares_the_path(aclient, two_models):
    response = await post_json(
        aclient, "/v1/audio/speech", {"model": "tts-voice", "input": "hello world"}
    )
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "audio/wav"
    assert response.content[:4] == b"RIFF"
    assert response["X-Arbiter-Service"] == "tts"


async def test_it_answers_an_unknown_model_with_an_openai_shaped_404(aclient, two_models):
    first, *_ = two_models
    response = await post_json(aclient, "/v1/chat/completions", chat("gpt-17"))
    assert response.status_code == 404
    assert json.loads(response.content) == {
        "error": {
            "type": "invalid_request_error",
            "message": "The model `gpt-17` is neither served nor in the catalog.",
            "param": "model",
            "code": "model_not_found",
        }
    }
    assert first.requests() == 0


async def test_it_forwards_the_rest_of_the_path_on_capability_routes(aclient, two_models):
    first, *_ = two_models
    response = await post_json(aclient, "/v1/llm/v1/chat/completions", chat("alpha-chat"))
    assert response.status_code == 200, response.content
    assert response["X-Arbiter-Service"] == "vllm-alpha"
    response = await aclient.get("/v1/llm/v1/models")
    assert json.loads(response.content)["data"][0]["id"] == "alpha-chat"
    response = await post_json(aclient, "/v1/tts/v1/audio/speech", {"input": "hi"})
    assert response.status_code == 200 and response["X-Arbiter-Service"] == "tts"
    response = await aclient.get("/v1/image/anything")
    assert response.status_code == 404
    assert json.loads(response.content)["error"]["code"] == "capability_not_found"


async def test_it_skips_down_services_on_capability_routes(aclient, two_models, start_backend):
    spare = start_backend("alpha-chat")
    await sync_to_async(register)("vllm-zeta", spare.url, host="gpu-3", loaded_model="alpha-chat")
    await Service.objects.filter(name="vllm-alpha").aupdate(health="down")
    response = await post_json(aclient, "/v1/llm/v1/chat/completions", chat("alpha-chat"))
    assert response.status_code == 200
    assert response["X-Arbiter-Service"] == "vllm-zeta"
    # By model too: a healthy replica wins over a down one.
    response = await post_json(aclient, "/v1/chat/completions", chat("alpha-chat"))
    assert response["X-Arbiter-Service"] == "vllm-zeta"


async def test_it_sends_audio_paths_to_the_audio_service_as_they_are(aclient, two_models):
    _first, _second, tts = two_models
    before = tts.requests()
    response = await aclient.get("/audio/voices?lang=en")
    # The simulated TTS server has no such route: its own 404 comes back through.
    assert response.status_code == 404
    assert json.loads(response.content) == {"detail": "Not Found"}
    assert response["X-Arbiter-Service"] == "tts"
    assert tts.requests() == before  # GETs are not counted by the simulator; the header is


async def test_it_lists_loaded_and_loadable_models_on_the_models_route(aclient, two_models):
    await sync_to_async(catalog_model)("alpha", "alpha-chat")
    await sync_to_async(catalog_model)("big", "big-model", estimated_vram_mib=70_000)
    response = await aclient.get("/v1/models")
    assert response.status_code == 200
    body = json.loads(response.content)
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    assert by_id["alpha-chat"]["arbiter"] == {
        "state": "loaded",
        "service": "vllm-alpha",
        "host": "gpu-1",
        "health": "up",
        "catalog_key": "alpha",
        "replicas": [{"service": "vllm-alpha", "host": "gpu-1", "health": "up"}],
    }
    assert by_id["beta-embed"]["arbiter"]["state"] == "loaded"
    assert by_id["big-model"]["object"] == "model"
    assert by_id["big-model"]["arbiter"] == {
        "state": "loadable",
        "catalog_key": "big",
        "host": None,
        "kind": "llm",
        "estimated_vram_mib": 70_000,
    }


async def test_it_lists_a_model_served_twice_once_with_both_replicas(aclient, two_models):
    await sync_to_async(register)(
        "vllm-aardvark", two_models[0].url, host="gpu-3", loaded_model="alpha-chat", health="down"
    )
    body = json.loads((await aclient.get("/v1/models")).content)
    ids = [m["id"] for m in body["data"]]
    assert ids.count("alpha-chat") == 1 and len(ids) == len(set(ids))
    alpha = next(m for m in body["data"] if m["id"] == "alpha-chat")["arbiter"]
    # The healthy replica first, as routing prefers it (though "aardvark" sorts first).
    assert alpha["service"] == "vllm-alpha"
    assert alpha["replicas"] == [
        {"service": "vllm-alpha", "host": "gpu-1", "health": "up"},
        {"service": "vllm-aardvark", "host": "gpu-3", "health": "down"},
    ]


async def test_it_passes_the_request_and_its_content_type_to_the_backend_untouched(
    aclient, two_models
):
    # The simulator answers 400 naming the field when `messages` is wrong: the body
    # arrived as sent, and the backend's own error status and shape come back.
    response = await post_json(aclient, "/v1/chat/completions", {"model": "alpha-chat"})
    assert response.status_code == 400
    assert json.loads(response.content)["error"]["param"] == "messages"
