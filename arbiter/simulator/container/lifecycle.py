"""The container's life: the start-up log, ready, serving, a crash or a clean shutdown."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from arbiter.simulator.container.logs import log, log_line, print_lock
from arbiter.simulator.container.options import (
    ARCHITECTURES,
    CRASH_EXIT_CODE,
    ROUTES,
    VLLM_VERSION,
    Options,
    parse_options,
)
from arbiter.simulator.container.server import ContainerServer


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
    with print_lock:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    # Handlers first, so a `docker stop` during start-up still exits cleanly with 0.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return run(parse_options(sys.argv[1:] if argv is None else argv))
