"""Ready means it answers: one tiny real request before a swap is complete.

A model listed by `/v1/models` has loaded, but that does not prove it can serve: a
broken checkpoint, a chat template that fails, a kernel this GPU lacks all show up only
on the first request (GPUStack #3870, llama-swap #608: "ready" models that fail every
request). So once the model is listed, the swap sends the smallest request of its kind
and is complete only when that succeeds:

- `llm`: `POST /v1/completions {"prompt": "Hello", "max_tokens": 1}`. vLLM serves the
  completions API for every generative model, chat models included (the chat template
  only matters to /v1/chat/completions; docs.vllm.ai "OpenAI-Compatible Server");
- `embeddings`: `POST /v1/embeddings {"input": "Hello"}` (vLLM's pooling models serve no
  completions);
- `tts`: `POST /v1/audio/speech {"input": "Hello"}`. Speech servers differ in the fields
  they require (voices are server-specific), so a 4xx other than 401/404 there means the
  server parsed the request and the model is up; for the other kinds our request is
  the OpenAI API's minimal valid one, and any 4xx is the model failing it.

A 5xx, a refused connection or a timeout fails the swap with what the backend said: vLLM
answers errors as `{"error": {"message", "type", "code"}}` (older releases put the
fields at the top level; both are read).
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


def error_detail(response: httpx.Response) -> str:
    """The backend's own words: vLLM's error message, else the body's start."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:MAX_DETAIL] if text else "(empty body)"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        kind = f"{error.get('type')}: " if error.get("type") else ""
        return f"{kind}{error['message']}"[:MAX_DETAIL]
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"][:MAX_DETAIL]
    return response.text.strip()[:MAX_DETAIL]


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
    if passes(kind, response.status_code):
        note = "" if response.is_success else f" ({error_detail(response)}; the server is up)"
        return ReadyResult(True, f"{said} in {ms:.0f} ms{note}")
    return ReadyResult(False, f"{said} in {ms:.0f} ms: {error_detail(response)}")
