"""Ready means it answers: one tiny real request before a swap is complete.

A model listed by `/v1/models` has loaded, but that does not prove it can serve: a
broken checkpoint, a chat template that fails, a kernel this GPU lacks all show up only
on the first request (GPUStack #3870, llama-swap #608: "ready" models that fail every
request). So once the model is listed, the swap sends the smallest request of its kind
and is complete only when that succeeds:

- `llm`: `POST /v1/completions {"prompt": "Hello", "max_tokens": 1}`. vLLM serves the
  Completions API for every text generation model; the Chat API additionally needs a
  chat template, which base models lack (docs.vllm.ai/en/stable/serving/
  openai_compatible_server/, "Supported APIs"), so completions is the request every
  generative model answers;
- `embeddings`: `POST /v1/embeddings {"input": "Hello"}` (the Embeddings API is "only
  applicable to embedding models", same page; pooling models serve no completions);
- `tts`: `POST /v1/audio/speech {"input": "Hello"}`. `input` is the one field speech
  servers agree on: vLLM-Omni defaults `voice` and `model` (vllm-project/vllm-omni
  docs/serving/speech_api.md), other OpenAI-style servers require a `voice` of their
  own naming and answer 422. So a 4xx other than 401/404 there means the server parsed
  the request and the model is up; for the other kinds our request is the OpenAI API's
  minimal valid one, and any 4xx is the model failing it.

A 5xx, a refused connection or a timeout fails the swap with what the backend said: vLLM
answers errors as `{"error": {"message", "type", "param", "code"}}` (ErrorResponse and
ErrorInfo in vllm/entrypoints/openai/protocol.py; older releases put the fields at the
top level with `"object": "error"`, as vLLM 0.8.4 does in QwenLM/Qwen3-VL#988; both are
read). vLLM has also answered such an error body with HTTP 200 (vllm-project/vllm#21704:
/v1/embeddings on a generative model), so a 2xx whose JSON body is an error fails too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

PROMPT = "Hello"
# Longest part of the backend's error message quoted in the swap's log and error.
MAX_DETAIL = 300


@dataclass(frozen=True)
class ReadyRequest:
    path: str
    body: dict[str, Any]
    what: str  # for the log: "1-token completion"


@dataclass(frozen=True)
class ReadyResult:
    ok: bool
    summary: str  # one line: the request, the answer, the latency


def request_for(kind: str, served_name: str) -> ReadyRequest:
    if kind == "embeddings":
        return ReadyRequest(
            "/v1/embeddings", {"model": served_name, "input": PROMPT}, "embedding of one word"
        )
    if kind == "tts":
        return ReadyRequest(
            "/v1/audio/speech", {"model": served_name, "input": PROMPT}, "speech of one word"
        )
    return ReadyRequest(
        "/v1/completions",
        {"model": served_name, "prompt": PROMPT, "max_tokens": 1},
        "1-token completion",
    )


def vllm_error(body: Any) -> str | None:
    """vLLM's error message in a JSON body ("Type: message"), or None if it is none."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict) and error.get("message"):
        fields = error
    elif body.get("object") == "error" and isinstance(body.get("message"), str):
        fields = body  # older vLLM: the fields at the top level
    else:
        return None
    kind = f"{fields.get('type')}: " if fields.get("type") else ""
    return f"{kind}{fields['message']}"[:MAX_DETAIL]


def json_body(response: httpx.Response) -> Any:
    if "json" not in response.headers.get("content-type", ""):
        return None  # speech answers audio; a plain-text error is read as text
    try:
        return response.json()
    except ValueError:
        return None


def error_detail(response: httpx.Response) -> str:
    """The backend's own words: vLLM's error message, else the body's start."""
    body = json_body(response)
    said = vllm_error(body)
    if said:
        return said
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"][:MAX_DETAIL]
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return body["detail"][:MAX_DETAIL]  # FastAPI's own 404/405/422 answers
    text = response.text.strip()
    return text[:MAX_DETAIL] if text else "(empty body)"


def passes(kind: str, status: int) -> bool:
    if 200 <= status < 300:
        return True
    return kind == "tts" and 400 <= status < 500 and status not in (401, 404)


async def check_ready(
    client: httpx.AsyncClient,
    url: str,
    kind: str,
    served_name: str,
    headers: dict[str, str],
    timeout: float,
) -> ReadyResult:
    """Send the kind's tiny request to `url` (the base URL, path appended); never raises
    for what the backend or the network does."""
    ready = request_for(kind, served_name)
    target = url.rstrip("/") + ready.path
    started = time.perf_counter()
    try:
        response = await client.post(target, json=ready.body, headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        return ReadyResult(
            False, f"ready check: POST {ready.path} ({ready.what}) got no answer in {timeout:g} s"
        )
    except httpx.HTTPError as error:
        reason = f"{type(error).__name__} {error}".strip()
        return ReadyResult(False, f"ready check: POST {ready.path} ({ready.what}) failed: {reason}")
    ms = (time.perf_counter() - started) * 1000
    said = f"ready check: POST {ready.path} ({ready.what}) answered {response.status_code}"
    if response.is_success and (error_body := vllm_error(json_body(response))):
        return ReadyResult(False, f"{said} in {ms:.0f} ms with an error body: {error_body}")
    if passes(kind, response.status_code):
        note = "" if response.is_success else f" ({error_detail(response)}; the server is up)"
        return ReadyResult(True, f"{said} in {ms:.0f} ms{note}")
    return ReadyResult(False, f"{said} in {ms:.0f} ms: {error_detail(response)}")
