"""A small HTTP API to drive a simulated cluster running in another process.

Browser tests and `make run` demos start the simulator as its own process; this is
how they pin GPU numbers, take a host down or arm a fault there. It is served by the
standard library in a thread; every action runs on the cluster's event loop.

    GET  /hosts                         every host: up/down, GPUs, memory, containers
    POST /hosts/{name}/gpus/{index}     {"utilization": 80, "memory_used_mib": 1000, "reset": false}
    POST /hosts/{name}/down             POST /hosts/{name}/up
    POST /hosts/{name}/faults           {"slow_start": 5, "fail_start": true, ...}
                                        ("bad_completion": true: listed and healthy, but
                                        every inference request answers vLLM's 500)
    POST /hosts/{name}/free-memory      ends the GPU processes a stopped container left
                                        behind (the hold_memory_after_stop fault)
    POST /hosts/{name}/driver           {"fault": "version_mismatch"} (or no_devices,
                                        driver_not_loaded; "none" mends it)
    POST /hosts/{name}/rotate-host-key
    POST /hosts/{name}/sshd             {"accept_env": ["LANG", "LC_*", "HF_TOKEN"],
                                        "max_sessions": 10, "hf_on_path": false,
                                        "hub_module": true, "docker_group": true,
                                        "nvidia_runtime": true} (any subset; sshd.py)
    POST /hosts/{name}/time-scale       {"scale": 0.01}: pulls, downloads and loads take
                                        realistic time × scale; null: quick (timing.py)
    GET  /hosts/{name}/commands?since=N the exec requests received from index N on
    GET  /hosts/{name}/containers       what runs there: name, image, state, labels,
                                        network, ports (`docker ps --all`)
    POST /hosts/{name}/containers       {"name": "vllm_node", "image": "nvcr.io/nvidia/vllm:
                                        25.09-py3", "network": "host", "port": 8888} starts
                                        a container the way a script would (scripted.py);
                                        optional lists "env", "devices", "serve_args" and
                                        "labels" (KEY=VALUE; "arbiter.managed=true" makes
                                        a container look like Arbiter's: an orphan)
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from arbiter.simulator.gpus import DRIVER_FAULT_NAMES
from arbiter.simulator.scripted import ScriptedRun, ScriptError, start_scripted, summary
from arbiter.simulator.sshd import SshdPolicy

if TYPE_CHECKING:
    from arbiter.simulator.cluster import SimulatedCluster

GPU_FIELDS = {"utilization", "temperature", "power", "memory_used_mib", "reset"}
FAULT_FIELDS = {
    "slow_start",
    "fail_start",
    "crash_after_ready",
    "bad_model",
    "log_flood_mib",
    "bad_completion",
    "hold_memory_after_stop",
}
MAX_BODY = 64 * 1024


class ControlError(Exception):
    """An HTTP error answer: status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ControlServer:
    """The control API of one cluster, on 127.0.0.1 and a free port."""

    def __init__(self, cluster: SimulatedCluster, loop: asyncio.AbstractEventLoop) -> None:
        self.cluster = cluster
        self.loop = loop
        handler = type("Handler", (_Handler,), {"control": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="sim-control", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def on_loop(self, func: Any) -> Any:
        """Run `func()` (sync or async) on the cluster's loop, from a handler thread."""

        async def call() -> Any:
            result = func()
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=30)

    def dispatch(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Any:
        if method == "GET" and path == "/hosts":
            hosts = self.on_loop(lambda: [h.state() for h in self.cluster.hosts.values()])
            return {"simulated": True, "hosts": hosts}
        match = re.fullmatch(r"/hosts/([^/]+)(/.*)?", path)
        if match is None:
            raise ControlError(404, f"no such resource: {path}")
        host = self.cluster.hosts.get(match.group(1))
        if host is None:
            raise ControlError(404, f"no such host: {match.group(1)}")
        rest = match.group(2) or ""
        if method == "GET" and rest == "":
            return self.on_loop(host.state)
        if method == "GET" and rest == "/commands":
            since = _int(query.get("since", ["0"])[0], "since")
            records = list(host.commands)[since:]
            return {"commands": [_record(r) for r in records], "next": since + len(records)}
        if rest == "/containers" and method in ("GET", "POST"):
            return self.containers(host, method, body)
        if method == "POST" and rest == "/down":
            self.on_loop(host.go_down)
            return {"up": False}
        if method == "POST" and rest == "/up":
            self.on_loop(host.come_up)
            return {"up": True}
        if method == "POST" and rest == "/rotate-host-key":
            self.on_loop(host.rotate_host_key)
            return {"host_key": host.host_key_line()}
        if method == "POST" and rest == "/driver":
            fault = _fields(body, {"fault"}).get("fault")
            if not isinstance(fault, str):
                raise ControlError(400, f"fault must be one of {list(DRIVER_FAULT_NAMES)}")
            self.on_loop(lambda: host.set_driver_fault(fault))  # ValueError: 400
            return {"driver_fault": host.board.driver_fault}
        if method == "POST" and rest == "/sshd":
            values = _fields(body, set(SshdPolicy.FIELDS))
            return {"sshd": self.on_loop(lambda: host.set_sshd(**values))}  # ValueError: 400
        if method == "POST" and rest == "/time-scale":
            scale = _fields(body, {"scale"}).get("scale")
            self.on_loop(lambda: host.set_time_scale(scale))  # ValueError: 400
            return {"time_scale": host.timing.scale}
        if method == "POST" and rest == "/free-memory":
            return {"freed": self.on_loop(host.free_held_memory)}
        if method == "POST" and rest == "/faults":
            values = _fields(body, FAULT_FIELDS)
            self.on_loop(lambda: host.inject(**values))
            return {"pending_faults": asdict(host.faults)}
        gpu = re.fullmatch(r"/gpus/(\d+)", rest)
        if method == "POST" and gpu:
            values = _fields(body, GPU_FIELDS)
            index = int(gpu.group(1))
            if index >= len(host.spec.gpus):
                raise ControlError(404, f"{host.name} has no GPU {index}")
            self.on_loop(lambda: host.set_gpu(index, **values))
            return {"gpus": self.on_loop(host.state)["gpus"]}
        raise ControlError(404 if method in ("GET", "POST") else 405, f"no route: {method} {path}")

    def containers(self, host: Any, method: str, body: Any) -> Any:
        if method == "GET":
            listed = self.on_loop(lambda: [summary(c) for c in host.containers])
            return {"containers": listed}
        try:
            run = ScriptedRun.from_body(body if isinstance(body, dict) else {})
            container = self.on_loop(lambda: start_scripted(host, run))
        except ScriptError as error:
            raise ControlError(error.status, str(error)) from None
        return summary(container)


def _int(text: str, name: str) -> int:
    if not text.isdigit():
        raise ControlError(400, f"{name} must be a non-negative integer")
    return int(text)


def _fields(body: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ControlError(400, "the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ControlError(400, f"unknown fields: {', '.join(unknown)}; allowed: {sorted(allowed)}")
    return body


def _record(record: Any) -> dict[str, Any]:
    return {
        "raw": record.raw,
        "argvs": record.argvs,
        "time": record.time,
        "env_names": record.env_names,
        "env_dropped": record.env_dropped,
        "exit_status": record.exit_status,
    }


class _Handler(BaseHTTPRequestHandler):
    control: ControlServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.handle_any("GET")

    def do_POST(self) -> None:  # noqa: N802
        self.handle_any("POST")

    def handle_any(self, method: str) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        try:
            if length > MAX_BODY:
                raise ControlError(413, "body too large")
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                raise ControlError(400, "the body is not valid JSON") from None
            result = self.control.dispatch(
                method, parts.path.rstrip("/"), parse_qs(parts.query), body
            )
            self.reply(200, result)
        except ControlError as error:
            self.reply(error.status, {"error": str(error)})
        except (TypeError, ValueError, IndexError) as error:
            self.reply(400, {"error": str(error)})

    def reply(self, status: int, payload: Any) -> None:
        data = json.dumps(payload, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (base signature)
        return  # quiet: tests poll this API a lot
