"""A simulated inference container: a real local process that behaves like vLLM.

The simulated docker daemon starts one of these per `docker run`. It serves the
OpenAI-compatible subset the Arbiter relies on and prints vLLM-like logs, so log
followers, readiness probes and the proxy see what they would see on a GPU host.
Standard library only: it must start fast and must never import Django.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import uuid
import wave
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import cycle, islice
from typing import Any, TextIO

VLLM_VERSION = "0.11.0"
DEFAULT_TOKENS = 16
MAX_TOKENS_CAP = 4096
EMBEDDING_DIM = 16
SAMPLE_RATE = 16_000
CRASH_EXIT_CODE = 1  # what vLLM exits with when its engine core dies
ARCHITECTURES = {"llm": "LlamaForCausalLM", "embeddings": "XLMRobertaModel", "tts": "OrpheusTTS"}
ROUTES = {
    ("GET", "/health"): "health",
    ("GET", "/metrics"): "metrics",
    ("GET", "/v1/models"): "models",
    ("POST", "/v1/chat/completions"): "chat_completions",
    ("POST", "/v1/completions"): "completions",
    ("POST", "/v1/embeddings"): "embeddings",
    ("POST", "/v1/audio/speech"): "speech",
    # vLLM's sleep mode (`--enable-sleep-mode`, dev endpoints): what a service's
    # unload_route / load_route point at. Asleep, the engine refuses inference.
    ("POST", "/sleep"): "sleep",
    ("POST", "/wake_up"): "wake_up",
    ("GET", "/is_sleeping"): "is_sleeping",
}
INFERENCE_PREFIX = "/v1/"

_print_lock = threading.Lock()


def log_line(line: str, stream: TextIO | None = None) -> None:
    # Handler threads log concurrently, so one lock keeps lines whole; flush per line
    # because a pipe is block-buffered and a log follower must see lines as they happen.
    out = stream or sys.stdout
    with _print_lock:
        out.write(line + "\n")
        out.flush()


def log(level: str, where: str, message: str, stream: TextIO | None = None) -> None:
    log_line(f"{level} {time.strftime('%m-%d %H:%M:%S')} [{where}] {message}", stream)


@dataclass(frozen=True)
class Options:
    """Command-line options; `extra` holds the vLLM flags we accept and ignore."""

    name: str
    port: int
    kind: str
    startup_delay: float
    fail_start: bool
    crash_after_ready: float | None
    token_delay: float
    vram_mib: int
    max_model_len: int
    extra: dict[str, Any]


def parse_options(argv: list[str]) -> Options:
    # No abbreviations: an unknown vLLM flag must never be taken for a prefix of ours.
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--served-model-name", dest="name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kind", choices=sorted(ARCHITECTURES), default="llm")
    parser.add_argument("--startup-delay", type=float, default=2.0)
    parser.add_argument("--fail-start", action="store_true")
    parser.add_argument("--crash-after-ready", type=float, default=None)
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.add_argument("--vram-mib", type=int, default=0)
    parser.add_argument("--max-model-len", type=int, default=8192)
    known, unknown = parser.parse_known_args(argv)
    return Options(**vars(known), extra=flags_to_dict(unknown))


def flags_to_dict(args: list[str]) -> dict[str, Any]:
    """Turn `--gpu-memory-utilization 0.9 --enforce-eager` into vLLM's log-line dict."""
    flags: dict[str, Any] = {}
    key = "model_tag"  # a leading positional is the model, as in `vllm serve MODEL`
    for arg in args:
        if arg.startswith("--"):
            key, _, value = arg[2:].replace("-", "_").partition("=")
            flags[key] = value or True
        else:  # the value of the flag before it
            flags[key] = arg
    return flags


class ApiError(Exception):
    """An error answered in the OpenAI shape vLLM uses."""

    def __init__(self, status: int, message: str, kind: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param

    def payload(self) -> dict[str, Any]:
        error = {"message": str(self), "type": self.kind, "param": self.param, "code": self.status}
        return {"error": error}


class ContainerServer(ThreadingHTTPServer):
    """The HTTP side; bound at start-up so the port is reserved before it is ready."""

    daemon_threads = True
    # Like uvicorn: a burst of new connections must not overflow a backlog of 5.
    request_queue_size = 2048

    def __init__(self, options: Options) -> None:
        super().__init__(("127.0.0.1", options.port), RequestHandler)
        self.options = options
        self.ready = threading.Event()
        self.counts_lock = threading.Lock()  # handler threads update the counts concurrently
        self.total = self.cancelled = self.in_flight = 0
        self.sleeping = False
        self.sleeps = self.wakes = 0

    def count(self, started: int, cancelled: bool = False) -> None:
        """Track a generation request: count(1) when it starts, count(-1, ...) when it ends."""
        with self.counts_lock:
            self.total += max(started, 0)
            self.in_flight += started
            self.cancelled += int(cancelled)


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


class RequestHandler(BaseHTTPRequestHandler):
    """One HTTP/1.1 keep-alive connection; routes by (method, path) through ROUTES."""

    protocol_version = "HTTP/1.1"
    # Small answers must not wait ~40 ms for a delayed ACK (uvicorn sets TCP_NODELAY).
    disable_nagle_algorithm = True
    timeout = 5  # idle keep-alive connections are dropped, like uvicorn's default
    server: ContainerServer

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self.dispatch("POST")

    def dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        # Always drain the body, or the next request on this connection is misread.
        self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.cancelled = False
        route = ROUTES.get((method, path))
        counted = (
            method == "POST"
            and route is not None
            and path.startswith(INFERENCE_PREFIX)
            and self.server.ready.is_set()
        )
        if counted:
            self.server.count(1)
        try:
            if not self.server.ready.is_set():
                if path == "/health":
                    return self.send_bytes(503, b"", "text/plain")
                raise ApiError(503, "The server is still starting up.", "ServiceUnavailableError")
            if route is None:
                known = any(p == path for _, p in ROUTES)
                status, detail = (405, "Method Not Allowed") if known else (404, "Not Found")
                return self.send_json(status, {"detail": detail})
            if self.server.sleeping and counted:
                raise ApiError(
                    503, "The engine is sleeping: POST /wake_up first.", "ServiceUnavailableError"
                )
            getattr(self, route)()
        except ApiError as error:
            self.send_json(error.status, error.payload())
        except (BrokenPipeError, ConnectionResetError):
            self.cancelled, self.close_connection = True, True
        finally:
            if counted:
                self.server.count(-1, self.cancelled)

    def health(self) -> None:
        self.send_bytes(200, b"", "text/plain")

    def models(self) -> None:
        name = self.server.options.name
        model = {"id": name, "object": "model", "created": int(time.time()), "owned_by": "vllm"}
        model |= {"root": name, "max_model_len": self.server.options.max_model_len}
        self.send_json(200, {"object": "list", "data": [model]})

    def metrics(self) -> None:
        options, counters = self.server.options, self.server
        escaped = options.name.replace("\\", "\\\\").replace('"', '\\"')
        label = f'{{model_name="{escaped}"}}'
        rows = [
            ("vllm:num_requests_running", "gauge", "Requests in the batch.", counters.in_flight),
            ("vllm:num_requests_waiting", "gauge", "Requests waiting in the queue.", 0),
            ("sim_requests_total", "counter", "API requests received.", counters.total),
            ("sim_cancelled_requests_total", "counter", "Client hung up.", counters.cancelled),
            ("sim_in_flight", "gauge", "API requests being answered.", counters.in_flight),
            ("sim_vram_mib", "gauge", "VRAM the simulated model claims.", options.vram_mib),
            ("sim_sleeping", "gauge", "1 while in sleep mode.", int(counters.sleeping)),
            ("sim_sleeps_total", "counter", "POST /sleep received.", counters.sleeps),
            ("sim_wakes_total", "counter", "POST /wake_up received.", counters.wakes),
        ]
        text = "".join(
            f"# HELP {name} {help_}\n# TYPE {name} {kind}\n{name}{label} {value}\n"
            for name, kind, help_, value in rows
        )
        self.send_bytes(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")

    def sleep(self) -> None:
        with self.server.counts_lock:
            self.server.sleeping = True
            self.server.sleeps += 1
        self.send_bytes(200, b"", "text/plain")

    def wake_up(self) -> None:
        with self.server.counts_lock:
            self.server.sleeping = False
            self.server.wakes += 1
        self.send_bytes(200, b"", "text/plain")

    def is_sleeping(self) -> None:
        self.send_json(200, {"is_sleeping": self.server.sleeping})

    def chat_completions(self) -> None:
        request = self.json_request()
        self.generate(request, chat_prompt(request), chat=True)

    def completions(self) -> None:
        request = self.json_request()
        prompt = request.get("prompt")
        if isinstance(prompt, list):
            prompt = " ".join(map(str, prompt))
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be a string or a list.", "BadRequestError", "prompt")
        self.generate(request, prompt, chat=False)

    def embeddings(self) -> None:
        request = self.json_request()
        raw = request.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not inputs:
            raise ApiError(400, "input must be a string or a list.", "BadRequestError", "input")
        texts = [item if isinstance(item, str) else json.dumps(item) for item in inputs]
        vectors = map(embedding_vector, texts)
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        tokens = sum(max(1, len(t.split())) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}
        body = {"object": "list", "data": data, "model": self.server.options.name, "usage": usage}
        self.send_json(200, body)

    def speech(self) -> None:
        text = self.json_request().get("input")
        if not isinstance(text, str):
            raise ApiError(400, "input must be a string.", "BadRequestError", "input")
        self.send_bytes(200, speech_wav(text), "audio/wav")

    def json_request(self) -> dict[str, Any]:
        try:
            request = json.loads(self.body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ApiError(400, f"Invalid JSON body: {error}", "BadRequestError") from None
        if not isinstance(request, dict):
            raise ApiError(400, "The request body must be a JSON object.", "BadRequestError")
        model = request.get("model")
        if model is not None and model != self.server.options.name:  # vLLM defaults a missing one
            raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        return request

    def generate(self, request: dict[str, Any], prompt: str, chat: bool) -> None:
        count, limited = requested_tokens(request)
        tokens = reply_tokens(self.server.options.name, prompt, count)
        finish = "length" if limited else "stop"
        used = max(1, len(prompt.split()))
        usage = {"prompt_tokens": used, "completion_tokens": count, "total_tokens": used + count}
        stream = bool(request.get("stream"))
        kind = ("chat.completion" + ".chunk" * stream) if chat else "text_completion"
        envelope = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "object": kind}
        envelope |= {"created": int(time.time()), "model": self.server.options.name}
        if not stream:
            for _ in tokens:  # generation takes time, and vLLM aborts it if the client leaves
                self.pace()
            body = {**envelope, "choices": [choice(chat, False, "".join(tokens), finish, True)]}
            return self.send_json(200, {**body, "usage": usage})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, token in enumerate(tokens):
            self.pace()
            last = i == len(tokens) - 1
            delta = choice(chat, True, token, finish if last else None, first=i == 0)
            event = {**envelope, "choices": [delta]}
            self.write_chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
        self.write_chunk(b"data: [DONE]\n\n")
        self.write_chunk(b"")  # the zero-length chunk ends the body; the connection stays open

    def pace(self) -> None:
        """Wait one token's time; raise ConnectionResetError if the client hung up."""
        time.sleep(self.server.options.token_delay)
        # A readable socket that yields no bytes is at EOF: the peer closed it. This catches
        # the hang-up before the next write would, and works for non-streamed requests too.
        readable, _, _ = select.select([self.connection], [], [], 0)
        if readable and self.connection.recv(1, socket.MSG_PEEK) == b"":
            raise ConnectionResetError("client disconnected")

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def send_json(self, status: int, payload: dict[str, Any]) -> None:
        self.send_bytes(status, json.dumps(payload).encode(), "application/json")

    def send_bytes(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        phrase = HTTPStatus(code).phrase if isinstance(code, int) else ""
        host, port = self.client_address[:2]
        log_line(f'INFO:     {host}:{port} - "{self.requestline}" {code} {phrase}')

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (base signature)
        if not format.startswith("Request timed out"):  # idle keep-alive, not worth a line
            log_line(f"WARNING:  {format % args}")


def startup_script(o: Options) -> list[tuple[float, str, str]]:
    """(fraction of the start-up delay, source, message); 'tqdm' lines have no prefix."""
    args = {"model_tag": o.name, "port": o.port, "served_model_name": [o.name], **o.extra}
    gib = o.vram_mib / 1024 if o.vram_mib else 1.23
    d = o.startup_delay
    shard = (
        "Loading safetensors checkpoint shards: {:3d}% Completed | {}/4 [00:0{}<00:0{}, 1.00it/s]"
    )
    shards = [(0.2 + 0.1 * i, "tqdm", shard.format(25 * i, i, i, 4 - i)) for i in range(5)]
    return [
        (0.0, "api_server.py:1839", f"vLLM API server version {VLLM_VERSION} (simulated)"),
        (0.0, "utils.py:233", f"non-default args: {args}"),
        (0.05, "model.py:547", f"Resolved architecture: {ARCHITECTURES[o.kind]}"),
        (0.1, "core.py:93", f"Initializing a V1 LLM engine: max_seq_len={o.max_model_len}"),
        (0.15, "gpu_model_runner.py:2602", f"Starting to load model {o.name}..."),
        *shards,
        (0.65, "default_loader.py:267", f"Loading weights took {0.4 * d:.2f} seconds"),
        (0.7, "gpu_model_runner.py:2653", f"Model loading took {gib:.2f} GiB and {0.5 * d:.2f} s"),
        (0.8, "kv_cache_utils.py:1087", f"GPU KV cache size: {o.max_model_len * 16:,} tokens"),
        (0.85, "core.py:210", f"init engine (profile, kv cache, warmup) took {0.2 * d:.2f} s"),
        (0.9, "api_server.py:1971", f"Starting vLLM API server 0 on http://0.0.0.0:{o.port}"),
        (0.95, "launcher.py:34", "Available routes are: " + ", ".join(p for _, p in ROUTES)),
        (1.0, "uvicorn", f"Started server process [{os.getpid()}]"),
        (1.0, "uvicorn", "Waiting for application startup."),
        (1.0, "uvicorn", "Application startup complete."),
    ]


def play_startup(o: Options) -> bool:
    """Print the start-up log spread over the delay; False when --fail-start cut it short."""
    started = time.monotonic()
    for fraction, where, message in startup_script(o):
        if o.fail_start and fraction > 0.5:
            fail_start(o)
            return False
        time.sleep(max(0.0, started + fraction * o.startup_delay - time.monotonic()))
        if where in ("uvicorn", "tqdm"):
            log_line(f"INFO:     {message}" if where == "uvicorn" else message)
        else:
            log("INFO", where, message)
    return True


def fail_start(o: Options) -> None:
    # vLLM logs through `logging` to stdout; the final uncaught exception goes to stderr.
    log("ERROR", "core.py:708", "EngineCore failed to start.")
    oom = f"CUDA out of memory. Tried to allocate 2.00 GiB. (simulated failure of {o.name})"
    log("ERROR", "core.py:708", f"torch.OutOfMemoryError: {oom}")
    log_line("Traceback (most recent call last):", sys.stderr)
    log_line("RuntimeError: Engine core initialization failed. See root cause above.", sys.stderr)


class Shutdown(Exception):
    """Raised by the signal handler so the main thread unwinds from wherever it sleeps."""


def on_signal(signum: int, frame: object) -> None:
    raise Shutdown(signal.Signals(signum).name)


def run(options: Options) -> int:
    try:
        server = ContainerServer(options)  # bind first: the port is taken from the start
        threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
        if not play_startup(options):
            return 1
        server.ready.set()
        if options.crash_after_ready is None:
            while True:
                time.sleep(3600)
        time.sleep(options.crash_after_ready)
        log("ERROR", "core.py:843", "EngineCore encountered a fatal error. (simulated crash)")
        log("ERROR", "async_llm.py:480", "AsyncLLM output_handler failed: EngineDeadError")
        return CRASH_EXIT_CODE  # exit_now() cuts in-flight streams, as a real crash does
    except Shutdown as why:
        log_line(f"INFO:     Shutting down ({why})")
        log_line("INFO:     Application shutdown complete.")
        log_line(f"INFO:     Finished server process [{os.getpid()}]")
        return 0


def exit_now(code: int) -> None:
    # os._exit, not sys.exit: a daemon handler thread still logging could otherwise make
    # interpreter shutdown abort on the stdout lock. Holding our lock keeps lines whole.
    with _print_lock:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    # Handlers first, so a `docker stop` during start-up still exits cleanly with 0.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return run(parse_options(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    exit_now(main())
