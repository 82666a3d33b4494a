"""One model over several nodes: the head's rendezvous and a worker node's link to it.

Real vLLM with native multiprocessing (`vllm serve MODEL --nnodes K --node-rank R
--master-addr A --master-port P`, docs.vllm.ai "Parallelism and Scaling"): the head's
rank-0 worker creates torch.distributed's TCPStore on port P and waits for the ranks of
the other nodes (init_process_group); a node started with `--headless` runs no API
server, only workers that connect to A:P (vllm/entrypoints/cli/serve.py,
`run_headless`: "Launching vLLM (v...) headless multiproc executor, with head node
address A:P for torch.distributed process group."). torch's client retries until the
store answers, so a worker may start before its head.

The simulated store is one TCP connection per worker node, with two lines on it:

    worker -> head   "join R"   (R: the worker's node rank)
    head -> worker   "go"       (every node joined: load the weights)
    worker -> head   "loaded"   (its weights are in: the head's engine may profile)

The connection then stays open for the life of the pair: its end is how either side
learns that the other died, as NCCL's broken sockets tell the real processes. The store
listens on loopback only (every simulated host is 127.0.0.1); torch's listens on every
address. A master address that is not loopback is treated as a host nobody can reach.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from typing import BinaryIO

from arbiter.simulator.container.logs import log, log_line
from arbiter.simulator.container.options import DEFAULT_DISTRIBUTED_TIMEOUT, Options
from arbiter.simulator.container.threads import start_helper_thread

CONNECT_RETRY_SECONDS = 0.1
RETRY_WARNING_EVERY = 5.0  # seconds between repeated "failed to connect" warnings
WORKER_READY_LINE = "(simulated) headless worker ready"  # dockerd counts its memory from here


def timeout_seconds(options: Options) -> int:
    """The timeout torch would quote: --distributed-timeout-seconds, else its 600 s."""
    return options.distributed_timeout_seconds or DEFAULT_DISTRIBUTED_TIMEOUT


def c10d_warning(message: str) -> None:
    # torch's C++ logging prefix: `[W1201 12:34:56.000000000 socket.cpp:764] [c10d] ...`
    stamp = time.strftime("%m%d %H:%M:%S")
    log_line(f"[W{stamp}.000000000 socket.cpp:764] [c10d] {message}")


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class HeadStore:
    """The head's side: the listening store, the workers that joined, and their loss."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.expected = set(range(1, options.nnodes))
        self.links: dict[int, socket.socket] = {}
        self.lock = threading.Lock()
        self.all_joined = threading.Event()
        self.loaded: set[int] = set()
        self.all_loaded = threading.Event()
        self.lost = threading.Event()
        self.lost_rank: int | None = None
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", options.master_port))
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        self.listener = listener
        if not self.expected:  # pragma: no cover - nnodes > 1 always expects someone
            self.all_joined.set()

    def start(self) -> None:
        start_helper_thread(self._accept, name="store")

    @property
    def joined_ranks(self) -> int:
        """torch.distributed ranks in the group so far: the head's own, and each node's."""
        with self.lock:
            nodes = 1 + len(self.links)
        return nodes * self.options.local_world_size

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            start_helper_thread(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        rank = self._join(conn, reader)
        if rank is None:
            conn.close()
            return
        with contextlib.suppress(OSError):
            for line in reader:  # "loaded", then only the end matters
                if line.strip() == b"loaded":
                    self._loaded(rank)
        with self.lock:
            if self.lost_rank is None:
                self.lost_rank = rank
        self.lost.set()

    def _loaded(self, rank: int) -> None:
        with self.lock:
            self.loaded.add(rank)
            done = self.loaded == self.expected
        if done:
            self.all_loaded.set()

    def _join(self, conn: socket.socket, reader: BinaryIO) -> int | None:
        """The rank a worker joins with, or None when it cannot join (the group formed
        already, a second node with the same rank, a rank that is not a worker's)."""
        try:
            line = reader.readline(64).decode(errors="replace").split()
        except OSError:
            return None
        if len(line) != 2 or line[0] != "join" or not line[1].isdigit():
            return None
        rank = int(line[1])
        with self.lock:
            if self.all_joined.is_set() or rank not in self.expected or rank in self.links:
                return None
            self.links[rank] = conn
            if set(self.links) != self.expected:
                return rank
            for link in self.links.values():
                with contextlib.suppress(OSError):
                    link.sendall(b"go\n")
        self.all_joined.set()
        return rank


def head_store_error(options: Options) -> list[str]:
    """torch's refusal when the store's port is taken (c10d socket.cpp, newer releases)."""
    port = options.master_port
    return [
        "torch.distributed.DistNetworkError: The server socket has failed to listen on any "
        f"local network address. The server socket has failed to bind to [::]:{port} (errno: "
        f"98 - Address already in use). The server socket has failed to bind to "
        f"0.0.0.0:{port} (errno: 98 - Address already in use).",
    ]


def join_timeout_error(options: Options, joined: int) -> list[str]:
    """The head's TCPStore giving up on the missing nodes (torch DistStoreError)."""
    seconds = timeout_seconds(options) + 1  # torch reports one second more than it waited
    return [
        "torch.distributed.DistStoreError: Timed out after "
        f"{seconds} seconds waiting for clients. {joined}/{options.world_size} clients joined.",
    ]


def lost_during_startup_error(options: Options) -> list[str]:
    """A node lost after the group formed and before the engine was up: the head waits in
    a collective until NCCL's watchdog gives up. (Real vLLM can hang far longer: see
    the follower-without---headless reports; the watchdog line's exact fields vary by
    torch release and are not confirmed here.)"""
    ms = timeout_seconds(options) * 1000
    return [
        "[rank0]:[E ProcessGroupNCCL.cpp:632] [Rank 0] Watchdog caught collective operation "
        f"timeout: WorkNCCL(SeqNum=1, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, "
        f"Timeout(ms)={ms}) ran for {ms + 1} milliseconds before timing out.",
        "RuntimeError: Engine core initialization failed. See root cause above. "
        "Failed core proc(s): {}",
    ]


class WorkerLink:
    """A worker node's connection to its head, made with torch's retries."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.conn: socket.socket | None = None

    def connect(self) -> bool:
        """Connect and join; False when the head never answered within the timeout."""
        o = self.options
        deadline = time.monotonic() + o.join_timeout
        warned_at = 0.0
        while time.monotonic() < deadline:
            reason = "113 - No route to host"
            if is_loopback(o.master_addr):
                try:
                    self.conn = socket.create_connection((o.master_addr, o.master_port), 1.0)
                except OSError as error:
                    reason = f"{error.errno or 111} - {error.strerror or 'Connection refused'}"
                else:
                    self.conn.sendall(f"join {o.node_rank}\n".encode())
                    return True
            if time.monotonic() - warned_at >= RETRY_WARNING_EVERY:
                warned_at = time.monotonic()
                c10d_warning(
                    f"The client socket has failed to connect to [{o.master_addr}]:"
                    f"{o.master_port} (errno: {reason})."
                )
            time.sleep(CONNECT_RETRY_SECONDS)
        ms = timeout_seconds(o) * 1000
        log_line(
            "torch.distributed.DistNetworkError: The client socket has timed out after "
            f"{ms}ms while trying to connect to ({o.master_addr}, {o.master_port}).",
        )
        return False

    def wait_go(self) -> bool:
        """Wait for the head's go (False: the head's end closed first)."""
        assert self.conn is not None
        try:
            return self.conn.makefile("rb").readline(16).strip() == b"go"
        except OSError:
            return False

    def loaded(self) -> None:
        """Tell the head this node's weights are in."""
        assert self.conn is not None
        with contextlib.suppress(OSError):
            self.conn.sendall(b"loaded\n")

    def wait_closed(self, timeout: float | None) -> bool:
        """Block until the head's end closes (True) or `timeout` passes (False)."""
        assert self.conn is not None
        self.conn.settimeout(timeout)
        try:
            while self.conn.recv(4096):
                pass
        except TimeoutError:
            return False
        except OSError:
            pass
        return True

    def head_closed(self) -> bool:
        """Whether the head's end has closed already (without waiting)."""
        return self.wait_closed(0.001)


def log_head_lost(options: Options) -> None:
    # What a worker prints when the store's socket dies under it (torch c10d Utils.hpp).
    log(
        "ERROR",
        "multiproc_executor.py:646",
        "WorkerProc hit an exception.",
    )
    log_line(
        "torch.distributed.DistNetworkError: Failed to recv, got 0 bytes. Connection was "
        "likely closed. Did the remote server shutdown or crash?"
    )
    log_line(f"(simulated) the head at {options.master_addr}:{options.master_port} went away")
