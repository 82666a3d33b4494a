"""The container's life: the start-up log, ready, serving, a crash or a clean shutdown."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable

from arbiter.simulator.container.distributed import (
    WORKER_READY_LINE,
    HeadStore,
    WorkerLink,
    head_store_error,
    join_timeout_error,
    log_head_lost,
    lost_during_startup_error,
)
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
from arbiter.simulator.container.threads import start_helper_thread


def startup_script(o: Options) -> list[tuple[float, str, str]]:
    """(fraction of the start-up delay, source, message); 'tqdm' lines have no prefix."""
    args = {"model_tag": o.name, "port": o.port, "served_model_name": [o.name], **o.extra}
    if o.multi_node:
        args |= {"tensor_parallel_size": o.tensor_parallel_size, "nnodes": o.nnodes}
        args |= {"node_rank": o.node_rank, "master_addr": o.master_addr}
        args |= {"master_port": o.master_port}
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


KV_CACHE_STEP = 0.8  # the start-up script's fraction where the KV cache is profiled


def play_startup(o: Options, before_kv_cache: Callable[[], bool] | None = None) -> bool:
    """Print the start-up log spread over the delay; False when --fail-start cut it short
    or `before_kv_cache` (a multi-node head's wait for its other nodes) said no."""
    if o.log_flood_mib:
        flood_log(o.log_flood_mib)
    started = time.monotonic()
    for fraction, where, message in startup_script(o):
        if o.fail_start and fraction > 0.5:
            fail_start(o)
            return False
        if before_kv_cache is not None and fraction >= KV_CACHE_STEP:
            waited_from = time.monotonic()
            if not before_kv_cache():
                return False
            started += time.monotonic() - waited_from
            before_kv_cache = None
        time.sleep(max(0.0, started + fraction * o.startup_delay - time.monotonic()))
        if where in ("uvicorn", "tqdm"):
            log_line(f"INFO:     {message}" if where == "uvicorn" else message)
        else:
            log("INFO", where, message)
    return True


def flood_log(mib: float) -> None:
    """The flood fault: `mib` MiB of 200-character lines, and one line of 1 MiB without
    a break, on stdout (as a container stuck printing a warning in a loop does)."""
    filler = "x" * 200
    line_count = int(mib * 1024 * 1024 / 200)
    with print_lock:
        for start in range(0, line_count, 5000):
            sys.stdout.write(
                "".join(
                    (f"WARNING flood.py:1 [simulated flood] line {n:>9} " + filler)[:199] + "\n"
                    for n in range(start, min(start + 5000, line_count))
                )
            )
        sys.stdout.write("y" * (1024 * 1024) + "\n")
        sys.stdout.flush()


def fail_start(o: Options) -> None:
    # vLLM logs through `logging` to stdout; the final uncaught exception goes to stderr.
    log("ERROR", "core.py:708", "EngineCore failed to start.")
    oom = f"CUDA out of memory. Tried to allocate 2.00 GiB. (simulated failure of {o.name})"
    log("ERROR", "core.py:708", f"torch.OutOfMemoryError: {oom}")
    log_line("Traceback (most recent call last):", sys.stderr)
    log_line("RuntimeError: Engine core initialization failed. See root cause above.", sys.stderr)


ENGINE_DEATH_LINGER = 1.0


class Shutdown(Exception):
    """Raised by the signal handler so the main thread unwinds from wherever it sleeps."""


def on_signal(signum: int, frame: object) -> None:
    raise Shutdown(signal.Signals(signum).name)


def run(options: Options) -> int:
    try:
        if options.multi_node and options.node_rank_within_dp > 0:
            return run_follower(options)
        if options.multi_node and options.headless:
            return run_headless_leader(options)
        store = None
        if options.multi_node:
            try:
                store = HeadStore(options)
            except OSError:
                log_error_lines(head_store_error(options))
                return 1
            store.start()
        # Bind first: the port is taken from the start. A head does not listen before its
        # workers joined: vLLM binds the API socket (setup_server) and serves only once
        # the engine, and with it the whole process group, is up.
        server = ContainerServer(options, listen=store is None)
        if store is not None and not wait_for_nodes(store, options):
            return 1
        server.listen()
        start_helper_thread(server.serve_forever, name="http")
        barrier = None if store is None else (lambda: nodes_loaded(store, options))
        if not play_startup(options, barrier):
            return 1
        server.ready.set()
        if store is not None:
            start_helper_thread(watch_workers, store, server, name="watch")
        if server.engine_dead.wait(options.crash_after_ready):
            # A request reached the sleeping engine (server.engine_died), or a worker node
            # left (watch_workers). vLLM's watchdog notices within VLLM_WATCHDOG_TIME_S
            # (5 s) and the server exits; a moment here lets the dying answer and a last
            # /metrics read get out.
            time.sleep(ENGINE_DEATH_LINGER)
            log_line("INFO:     Shutting down")
            return CRASH_EXIT_CODE
        assert options.crash_after_ready is not None  # wait(None) returns only when set
        log("ERROR", "core.py:843", "EngineCore encountered a fatal error. (simulated crash)")
        log("ERROR", "async_llm.py:480", "AsyncLLM output_handler failed: EngineDeadError")
        return CRASH_EXIT_CODE  # exit_now() cuts in-flight streams, as a real crash does
    except Shutdown as why:
        log_line(f"INFO:     Shutting down ({why})")
        log_line("INFO:     Application shutdown complete.")
        log_line(f"INFO:     Finished server process [{os.getpid()}]")
        return 0


def log_error_lines(lines: list[str]) -> None:
    log_line("Traceback (most recent call last):", sys.stderr)
    for line in lines:
        log_line(line, sys.stderr)


def wait_for_nodes(store: HeadStore, o: Options) -> bool:
    """The head's rendezvous: every worker node joins within the timeout, or it fails."""
    log(
        "INFO",
        "parallel_state.py:1208",
        f"world_size={o.world_size} rank=0 local_rank=0 distributed_init_method="
        f"tcp://{o.master_addr}:{o.master_port} backend=nccl",
    )
    if store.all_joined.wait(o.join_timeout):
        return True
    log_error_lines(join_timeout_error(o, store.joined_ranks))
    return False


def nodes_loaded(store: HeadStore, o: Options) -> bool:
    """The engine's profiling and KV-cache set-up are collectives over every rank: the
    head goes on once every worker node loaded its weights. A node that died after
    joining leaves the head in that collective until NCCL's watchdog gives up."""
    if store.all_loaded.wait(o.join_timeout):
        return True
    log("ERROR", "core.py:708", "EngineCore failed to start.")
    log_error_lines(lost_during_startup_error(o))
    return False


def watch_workers(store: HeadStore, server: ContainerServer) -> None:
    """A worker node lost after ready kills the engine: /health answers 503 and the
    server exits (EngineDeadError; the same path as `server.engine_died`).

    Real vLLM notices a remote node's death when NCCL's sockets break under a collective;
    the simulator takes the store connection's end for it, at once.
    """
    store.lost.wait()
    log("ERROR", "core.py:843", "EngineCore encountered a fatal error.")
    log_line("RuntimeError: NCCL error: remote process exited or there was a network error")
    log("ERROR", "async_llm.py:480", "AsyncLLM output_handler failed: EngineDeadError")
    log_line(f"(simulated) node rank {store.lost_rank} left the group")
    server.engine_dead.set()


def run_follower(o: Options) -> int:
    """A node of rank > 0: with --headless, workers only; without, a server that fails.

    Without --headless vLLM starts its API server and a whole engine on that node too;
    its workers join the head's group and load, then the engine's first collective_rpc
    trips `AssertionError: collective_rpc should not be called on follower node`
    (vllm/v1/executor/multiproc_executor.py) and the node exits. The simulated one never
    binds its API port: on a real node it is that node's own, here it would be the
    head's (every simulated host shares loopback).
    """
    if o.headless:
        log(
            "INFO",
            "serve.py:218",
            f"Launching vLLM (v{VLLM_VERSION}) headless multiproc executor, with head node "
            f"address {o.master_addr}:{o.master_port} for torch.distributed process group.",
        )
    else:
        log("INFO", "api_server.py:1839", f"vLLM API server version {VLLM_VERSION} (simulated)")
    link = WorkerLink(o)
    if not link.connect():
        return 1
    if not link.wait_go():
        log_head_lost(o)
        return 1
    gib = o.vram_mib / 1024 if o.vram_mib else 1.23
    time.sleep(0.15 * o.startup_delay)
    log("INFO", "gpu_model_runner.py:2602", f"Starting to load model {o.name}...")
    time.sleep(0.5 * o.startup_delay)
    if o.fail_start:
        fail_start(o)
        return 1
    log("INFO", "gpu_model_runner.py:2653", f"Model loading took {gib:.2f} GiB")
    time.sleep(0.15 * o.startup_delay)
    if link.head_closed():
        log_head_lost(o)
        return 1
    if not o.headless:
        log("ERROR", "core.py:708", "EngineCore failed to start.")
        log_error_lines(
            [
                '  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/executor/'
                'multiproc_executor.py", line 355, in collective_rpc',
                "AssertionError: collective_rpc should not be called on follower node",
            ]
        )
        return 1
    link.loaded()
    log_line(WORKER_READY_LINE)
    if not link.wait_closed(o.crash_after_ready):
        log("ERROR", "multiproc_executor.py:646", "WorkerProc hit an exception. (simulated crash)")
        return CRASH_EXIT_CODE
    log_head_lost(o)
    return CRASH_EXIT_CODE


def run_headless_leader(o: Options) -> int:
    """`--headless` on node rank 0: vLLM's data-parallel headless engine, which waits for
    a front end's handshake that a plain multi-node launch never sends (run_headless's
    second branch). Approximated: it logs that and serves nothing until stopped."""
    log(
        "INFO",
        "serve.py:240",
        "Launching 1 data parallel engine(s) in headless mode, with head node address "
        "tcp://127.0.0.1:29550.",
    )
    while True:
        time.sleep(3600)


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
