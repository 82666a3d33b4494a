"""The broker benchmark's peers: the canned backend, nginx as a reverse proxy, LiteLLM.

- **Backend**: one nginx process with two servers answering every POST with a fixed
  body: the chat port a chat completion, the stream port a 64-chunk SSE stream. nginx
  cannot read a request body, so the variant is chosen by port; Arbiter and LiteLLM
  choose the port by the body's "model" (two catalog services / two model entries).
  `/health` and `/v1/models` (listing the port's model) make each server look like a
  served vLLM to Arbiter's prober, which calls exactly those two paths
  (`arbiter/engine/probes.py`). The stream is sent in one write, so the proxies get it
  in as few reads as the kernel makes: the figure is per stream and per SSE event, not
  per network round trip.
- **Reverse proxy**: nginx with a keep-alive upstream and `proxy_buffering off`, the
  reference a proxy in front of inference is compared with.
- **LiteLLM's proxy**: `litellm[proxy]` from PyPI in a virtual environment of its own
  under ~/.cache (never a project dependency), one worker, pointed at the same backend.

nginx and wrk are Debian packages installed with apt-get when missing; the bodies are
inline in the configuration (`return 200 '...'`), so nginx's unprivileged workers read
no file of ours.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.benchmarks.conftest import ChildProcess, start_child
from tests.helpers import free_port

CHAT_MODEL = "bench-model"
STREAM_MODEL = "bench-stream"
STREAM_CHUNKS = 64
LITELLM_VENV = Path.home() / ".cache" / "arbiter-bench" / "litellm"
LITELLM_KEY = "sk-arbiter-bench"
START_TIMEOUT = 120.0


def ensure_debian_package(binary: str, packages: tuple[str, ...]) -> str:
    """The path of `binary`, installing the first of `packages` apt-get can; else skip."""
    found = shutil.which(binary) or next(
        (p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}") if Path(p).exists()), ""
    )
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip(f"{binary} is missing and apt-get is unavailable (or not root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=300)
    for package in packages:
        done = subprocess.run(
            # Other people's tests install packages on this machine too: wait for the lock.
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends"]
            + ["-o", "DPkg::Lock::Timeout=300", package],
            env=env,
            check=False,
            timeout=900,
            capture_output=True,
        )
        found = shutil.which(binary) or ""
        if done.returncode == 0 and found:
            return found
    pytest.skip(f"could not install {binary} ({' or '.join(packages)}) with apt-get")


# -- the canned backend -------------------------------------------------------------------
def chat_completion(model: str) -> dict:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def sse_stream(model: str, chunks: int = STREAM_CHUNKS) -> str:
    """`chunks` chat.completion.chunk events, then `data: [DONE]`, as vLLM sends them."""
    events = []
    for i in range(chunks):
        delta = {"role": "assistant", "content": "tok"} if i == 0 else {"content": " tok"}
        chunk = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "choices": [
                {"index": 0, "delta": delta, "finish_reason": "stop" if i == chunks - 1 else None}
            ],
        }
        events.append(f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n")
    return "".join(events) + "data: [DONE]\n\n"


def model_list(model: str) -> dict:
    return {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "vllm"}]}


def nginx_string(text: str) -> str:
    """`text` as an nginx single-quoted string (nginx unescapes \\n, \\' and \\\\)."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


def backend_server(port: int, model: str, content_type: str, body: str, www: Path) -> str:
    """A server answering any POST with `body`: inline when it fits an nginx parameter
    (4 KiB at most), else from a file under `www` named like the request path."""

    def compact(value: dict) -> str:
        return nginx_string(json.dumps(value, separators=(",", ":")))

    if len(body) < 3000:
        answer = f"return 200 {nginx_string(body)};"
    else:
        for path in ("v1/chat/completions", "v1/completions"):
            (www / path).parent.mkdir(parents=True, exist_ok=True)
            (www / path).write_text(body)
        # The static module answers POST with 405; error_page turns that into a GET of
        # the same file with status 200 (nginx docs, ngx_http_core_module, error_page).
        answer = f"root {www};\n            error_page 405 =200 $uri;"
    return f"""
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location = /health {{ return 200; }}
        location = /v1/models {{
            default_type application/json;
            return 200 {compact(model_list(model))};
        }}
        location / {{
            default_type {content_type};
            {answer}
        }}
    }}"""


NGINX_HTTP = """\
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
{servers}
}}
"""


def proxy_server(port: int, upstream: str, servers: list[str]) -> str:
    """A reverse proxy as one would put in front of inference: keep-alive upstream,
    responses (SSE) and request bodies passed through unbuffered."""
    lines = "".join(f"        server {server};\n" for server in servers)
    return f"""
    upstream {upstream} {{
{lines}        keepalive 64;
        keepalive_timeout 2s;
    }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}"""


@dataclass
class Nginx:
    """One nginx process, its folder, and the ports its servers listen on, by name."""

    child: ChildProcess
    root: Path
    ports: dict[str, int]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def stop(self) -> None:
        self.child.stop()
        shutil.rmtree(self.root, ignore_errors=True)


Server = Callable[[int, Path], str]  # (port, a world-readable folder) -> a server block


def start_nginx(servers: dict[str, Server]) -> Nginx:
    """nginx with one server per entry of `servers`, each on a free port."""
    binary = ensure_debian_package("nginx", ("nginx-light", "nginx"))
    # Not under pytest's tmp_path (mode 0700): nginx's workers run as an unprivileged
    # user and must reach the files and temp folders here.
    root = Path(tempfile.mkdtemp(prefix="arbiter-bench-nginx-"))
    root.chmod(0o755)
    ports = {name: free_port() for name in servers}
    blocks = []
    for name, server in servers.items():
        www = root / f"www-{name}"
        www.mkdir(mode=0o755)
        blocks.append(server(ports[name], www))
    conf = root / "nginx.conf"
    conf.write_text(NGINX_HTTP.format(root=root, servers="".join(blocks)))
    child = start_child([binary, "-c", str(conf), "-p", str(root)], dict(os.environ))
    nginx = Nginx(child, root, ports)
    try:
        for name in ports:
            wait_for(child, f"{nginx.url(name)}/", "nginx", timeout=20)
    except AssertionError:
        nginx.stop()
        raise
    return nginx


def start_backend() -> Nginx:
    """The canned backend: a `chat` server and a `stream` server."""
    chat = json.dumps(chat_completion(CHAT_MODEL), separators=(",", ":"))
    stream = sse_stream(STREAM_MODEL)
    return start_nginx(
        {
            "chat": lambda port, www: backend_server(
                port, CHAT_MODEL, "application/json", chat, www
            ),
            "stream": lambda port, www: backend_server(
                port, STREAM_MODEL, "text/event-stream", stream, www
            ),
        }
    )


def start_reverse_proxy(upstreams: dict[str, list[str]]) -> Nginx:
    """nginx proxying one port per entry of `upstreams` ({name: [host:port, ...]})."""
    return start_nginx(
        {
            name: lambda port, _www, name=name, servers=servers: proxy_server(
                port, f"up_{name}", servers
            )
            for name, servers in upstreams.items()
        }
    )


def wait_for(child: ChildProcess, url: str, what: str, timeout: float = START_TIMEOUT) -> None:
    """Until `url` answers at all (any status)."""
    deadline = time.monotonic() + timeout
    while True:
        assert child.alive(), f"{what} exited:\n" + "".join(child.output)
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            assert time.monotonic() < deadline, f"{what} did not start:\n" + "".join(child.output)
            time.sleep(0.2)


# -- LiteLLM ------------------------------------------------------------------------------
def litellm_binary() -> tuple[str, str]:
    """(path of the `litellm` command, "") or ("", why it is unavailable)."""
    binary = LITELLM_VENV / "bin" / "litellm"
    if binary.exists():
        return str(binary), ""
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(LITELLM_VENV)],
        [str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet", "litellm[proxy]"],
    ]
    for argv in steps:
        try:
            done = subprocess.run(argv, check=False, timeout=900, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return "", f"{' '.join(argv[:3])} timed out"
        if done.returncode != 0:
            return "", f"{' '.join(argv[:3])} failed: {done.stderr.strip()[-500:]}"
    return (str(binary), "") if binary.exists() else ("", "pip installed no litellm command")


def litellm_config(backend: Nginx) -> str:
    entries = []
    for model, name in ((CHAT_MODEL, "chat"), (STREAM_MODEL, "stream")):
        entries.append(
            f"  - model_name: {model}\n"
            f"    litellm_params:\n"
            f"      model: openai/{model}\n"
            f"      api_base: {backend.url(name)}/v1\n"
            f"      api_key: none\n"
        )
    return "model_list:\n" + "".join(entries) + "litellm_settings:\n  telemetry: false\n"


def start_litellm(root: Path, backend: Nginx) -> tuple[ChildProcess | None, str, str]:
    """(LiteLLM's proxy process, its URL, "") or (None, "", why it was not started)."""
    binary, why = litellm_binary()
    if not binary:
        return None, "", why
    root.mkdir(parents=True, exist_ok=True)
    config = root / "litellm.yaml"
    config.write_text(litellm_config(backend))
    port = free_port()
    env = {
        **os.environ,
        "LITELLM_MASTER_KEY": LITELLM_KEY,  # the proxy refuses to start without one
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch from GitHub at import
        "LITELLM_LOG": "ERROR",
    }
    argv = [binary, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    child = start_child([*argv, "--num_workers", "1"], env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(child, f"{url}/health/liveliness", "LiteLLM's proxy")
    except AssertionError as exc:
        child.stop()
        return None, "", str(exc)[-800:]
    return child, url, ""


def litellm_version() -> str:
    python = LITELLM_VENV / "bin" / "python"
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip()
