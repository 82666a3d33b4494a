"""The container's HTTP server: the OpenAI-compatible routes and vLLM's sleep mode."""

from __future__ import annotations

import hmac
import json
import select
import socket
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from arbiter.simulator.container.logs import log, log_line
from arbiter.simulator.container.options import INFERENCE_PREFIX, ROUTES, Options
from arbiter.simulator.container.replies import (
    ApiError,
    chat_prompt,
    choice,
    embedding_vector,
    reply_tokens,
    requested_tokens,
    speech_wav,
)


class ContainerServer(ThreadingHTTPServer):
    """The HTTP side; bound at start-up so the port is reserved before it is ready."""

    daemon_threads = True
    # Like uvicorn: a burst of new connections must not overflow a backlog of 5.
    request_queue_size = 2048

    def __init__(self, options: Options, listen: bool = True) -> None:
        super().__init__(("127.0.0.1", options.port), RequestHandler, bind_and_activate=False)
        try:
            self.server_bind()
            if listen:
                self.server_activate()
        except BaseException:
            self.server_close()
            raise
        self.listening = listen
        self.options = options
        self.ready = threading.Event()
        self.counts_lock = threading.Lock()  # handler threads update the counts concurrently
        self.total = self.cancelled = self.in_flight = 0
        self.sleeping = False
        self.sleep_level = 0
        self.sleeps = self.wakes = 0
        # Inference requests that reached the engine while it slept (each one kills it,
        # as in vLLM: see `engine_died`), and the event the main thread exits on.
        self.asleep_requests = 0
        self.engine_dead = threading.Event()

    def listen(self) -> None:
        """Accept connections on the bound port (until then they are refused)."""
        if not self.listening:
            self.server_activate()
            self.listening = True

    @property
    def weights_mib(self) -> int:
        """What a level-1 sleep keeps: the weights (taken as half the claimed memory)."""
        return self.options.vram_mib // 2

    def count(self, started: int, cancelled: bool = False) -> None:
        """Track a generation request: count(1) when it starts, count(-1, ...) when it ends."""
        with self.counts_lock:
            self.total += max(started, 0)
            self.in_flight += started
            self.cancelled += int(cancelled)


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
        if self.server.ready.is_set() and not self.authorized(path):
            # vLLM's AuthenticationMiddleware (vllm/entrypoints/openai/server_utils.py):
            # with --api-key, any /v1 path without `Authorization: Bearer <key>` gets
            # exactly this 401 before routing; /health and the others stay open.
            return self.send_json(401, {"error": "Unauthorized"})
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
            if self.server.engine_dead.is_set() and path == "/health":
                return self.send_bytes(503, b"", "text/plain")  # check_health: EngineDeadError
            if self.server.engine_dead.is_set() and counted:
                return self.send_bytes(HTTPStatus.INTERNAL_SERVER_ERROR, b"", "text/plain")
            if self.server.sleeping and counted:
                return self.engine_died()
            if self.server.options.bad_completion and counted:
                # A model that loads and lists itself but cannot generate (a broken
                # checkpoint, a kernel that fails on this GPU): vLLM turns a request that
                # ends with finish_reason "error" into GenerationError, logs "Request %s
                # failed with an internal error during generation" and answers
                # {"error": {"message": "Internal server error", "type":
                # "InternalServerError", "param": null, "code": 500}}
                # (vllm/entrypoints/openai/serving_engine.py, later engine/serving.py:
                # _raise_if_error, _convert_generation_error_to_response).
                log(
                    "ERROR",
                    "serving.py:401",
                    f"Request cmpl-{uuid.uuid4().hex} failed with an internal error "
                    "during generation",
                )
                raise ApiError(500, "Internal server error", "InternalServerError")
            getattr(self, route)()
        except ApiError as error:
            self.send_json(error.status, error.payload())
        except (BrokenPipeError, ConnectionResetError):
            self.cancelled, self.close_connection = True, True
        finally:
            if counted:
                self.server.count(-1, self.cancelled)

    def authorized(self, path: str) -> bool:
        keys = self.server.options.api_key
        if not keys or not path.startswith("/v1"):
            return True
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return any(hmac.compare_digest(token.encode(), key.encode()) for key in keys)

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
            (
                "sim_asleep_requests_total",
                "counter",
                "Inference requests that reached the engine asleep (each kills it).",
                counters.asleep_requests,
            ),
        ]
        text = "".join(
            f"# HELP {name} {help_}\n# TYPE {name} {kind}\n{name}{label} {value}\n"
            for name, kind, help_, value in rows
        )
        self.send_bytes(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")

    def engine_died(self) -> None:
        """A generation request reaching a sleeping engine: what real vLLM does.

        The engine touches weights and KV cache that sleep released: "CUDA error: an
        illegal memory access was encountered", the engine core dies, and the server
        process terminates (vllm-project/vllm#15483, open). vLLM's launcher answers an
        EngineDeadError with an empty 500 and sets `should_exit`
        (vllm/entrypoints/launcher.py, `terminate_if_errored`); the main thread exits.
        """
        with self.server.counts_lock:
            self.server.asleep_requests += 1
        log("ERROR", "core.py:843", "EngineCore encountered a fatal error.")
        log_line("RuntimeError: CUDA error: an illegal memory access was encountered")
        log("ERROR", "async_llm.py:480", "AsyncLLM output_handler failed: EngineDeadError")
        log_line(
            f"(simulated) a request reached the engine asleep at level {self.server.sleep_level}"
        )
        self.send_bytes(HTTPStatus.INTERNAL_SERVER_ERROR, b"", "text/plain")
        self.server.engine_dead.set()

    def sleep(self) -> None:
        # POST /sleep?level=N, default 1 (vllm/entrypoints/serve/sleep/api_router.py).
        # Level 1 offloads the weights to CPU RAM and discards the KV cache; level 2
        # discards both (docs.vllm.ai, "Sleep Mode").
        query = parse_qs(urlsplit(self.path).query)
        raw = query.get("level", ["1"])[-1]
        if not raw.lstrip("-").isdigit():  # vLLM's int(level): a ValueError, i.e. a 500
            return self.send_json(500, {"detail": "Internal Server Error"})
        level = int(raw)
        with self.server.counts_lock:
            already = self.server.sleeping
            self.server.sleeping = True
            self.server.sleeps += 1
            if not already:  # vLLM: "Executor is already sleeping." and nothing happens
                self.server.sleep_level = level
        if not already:
            kept = self.server.weights_mib if level == 1 else 0
            freed = self.server.options.vram_mib - kept
            log(
                "INFO",
                "gpu_worker.py:117",
                f"Sleep mode freed {freed / 1024:.2f} GiB memory, "
                f"{kept / 1024:.2f} GiB memory is still in use.",
            )
            # Read by the simulated docker daemon for the host's memory (sleep_state).
            log_line(f"(simulated) asleep level={level} weights_mib={kept}")
        self.send_bytes(200, b"", "text/plain")

    def wake_up(self) -> None:
        with self.server.counts_lock:
            was = self.server.sleeping
            self.server.sleeping = False
            self.server.sleep_level = 0
            self.server.wakes += 1
        if was:  # waking an awake engine is a no-op ("Executor is not sleeping.")
            log("INFO", "api_router.py:40", "wake up the engine with tags: None")
            log_line("(simulated) awake")
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
