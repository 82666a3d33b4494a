"""What the simulated model answers: tokens, chat choices, embeddings, speech, errors."""

from __future__ import annotations

import hashlib
import io
import math
import struct
import wave
from itertools import cycle, islice
from typing import Any

from arbiter.simulator.container.options import (
    DEFAULT_TOKENS,
    EMBEDDING_DIM,
    MAX_TOKENS_CAP,
    SAMPLE_RATE,
)


class ApiError(Exception):
    """An error answered in the OpenAI shape vLLM uses."""

    def __init__(self, status: int, message: str, kind: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param

    def payload(self) -> dict[str, Any]:
        error = {"message": str(self), "type": self.kind, "param": self.param, "code": self.status}
        return {"error": error}


def requested_tokens(request: dict[str, Any]) -> tuple[int, bool]:
    """How many tokens to generate, and whether the client set the limit."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = request.get(key)
        if value is None:
            continue
        if type(value) is not int or value < 1:
            raise ApiError(400, f"{key} must be a positive integer.", "BadRequestError", key)
        return min(value, MAX_TOKENS_CAP), True
    return DEFAULT_TOKENS, False


def reply_tokens(name: str, prompt: str, count: int) -> list[str]:
    # Deterministic so tests can assert on content; cycled to fill any length.
    echo = " ".join(prompt.split()[:8]) or "(empty prompt)"
    words = islice(cycle(f"Simulated reply from {name}: {echo}".split()), count)
    return [word if i == 0 else f" {word}" for i, word in enumerate(words)]


def chat_prompt(request: dict[str, Any]) -> str:
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list.", "BadRequestError", "messages")
    user = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    content = user[-1].get("content", "") if user else ""
    if isinstance(content, list):  # content parts: keep the text ones
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def choice(chat: bool, stream: bool, text: str, finish: str | None, first: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
    if not chat:
        out["text"] = text
    elif not stream:
        out["message"] = {"role": "assistant", "content": text}
    else:
        out["delta"] = {"role": "assistant", "content": text} if first else {"content": text}
    return out


def embedding_vector(text: str) -> list[float]:
    # A unit vector from a hash: deterministic per input, different across inputs.
    raw = struct.unpack(f"<{EMBEDDING_DIM}h", hashlib.sha256(text.encode()).digest())
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 6) for v in raw]


def speech_wav(text: str) -> bytes:
    """A 440 Hz tone, 16-bit PCM mono, longer for longer input (capped at 10 s)."""
    frames = int(SAMPLE_RATE * min(0.2 + 0.04 * len(text), 10.0))
    tone = (int(8000 * math.sin(2 * math.pi * 440 * i / SAMPLE_RATE)) for i in range(frames))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(struct.pack(f"<{frames}h", *tone))
    return buffer.getvalue()
