"""The simulated docker daemon: a container registry whose containers are real processes.

Each container is `python -m arbiter.simulator.container` (or a short failing script
for injected faults), started in its own session so it outlives the SSH session and
the simulator itself, with stdout and stderr appended to per-container log files. The
registry is a JSON file, so a restarted simulator re-adopts running containers (same
pid *and* same process start time, so a recycled pid is not mistaken for one) and
reports those that died meanwhile as exited, like dockerd after a restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import posixpath
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from arbiter.simulator.container.distributed import WORKER_READY_LINE
from arbiter.simulator.gpus import GpuBoard, GpuLoad
from arbiter.simulator.sleep_state import held, read_sleep
from arbiter.simulator.timing import SimTiming

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_LINE = "Application startup complete."
# A headless worker node serves nothing: it holds its memory once its weights loaded.
READY_LINES = (READY_LINE, WORKER_READY_LINE)
READY_LINES_BYTES = tuple(line.encode() for line in READY_LINES)
READY_SCAN_CHUNK = 1 << 20
READY_SCAN_OVERLAP = max(len(line) for line in READY_LINES_BYTES)
LOST_EXIT_CODE = 255  # what dockerd reports for a container that died while it was away
# Popen objects of every container this process started, by pid, for the life of the
# process: keeping them referenced stops subprocess's own cleanup from reaping our
# children (it would steal their exit codes), and lets a second SimulatedCluster in the
# same process (a restart in a test) collect exit codes of containers the first started.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_FAIL_SCRIPT = (
    "import json,sys,time\n"
    "a=json.loads(sys.argv[1])\n"
    "for line in a['out']:\n    print(line, flush=True)\n"
    "time.sleep(a['delay'])\n"
    "for line in a['err']:\n    print(line, file=sys.stderr, flush=True)\n"
    "sys.exit(a.get('status', 1))\n"
)


@dataclass
class PortBinding:
    """`-p [ip:]host:container[/proto]`; host_port 0 means "docker picks one"."""

    container_port: int
    host_port: int
    host_ip: str = ""
    proto: str = "tcp"


@dataclass
class Container:
    """One container as dockerd keeps it; env *values* are never stored, only names."""

    id: str
    name: str
    image: str
    args: list[str]
    env_names: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    ports: list[dict[str, Any]] = field(default_factory=list)
    binds: list[str] = field(default_factory=list)
    network: str = "bridge"
    gpus: str | None = None
    gpu_indices: list[int] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    status: str = "created"  # created | running | exited
    pid: int = 0
    pid_start: int = 0
    exit_code: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    vram_mib: int = 0
    app_port: int = 8000
    bind_port: int = 0
    ready: bool = False
    error: str = ""
    # The hold_memory_after_stop fault: once stopped, its GPU process stays behind.
    hold_memory_after_stop: bool = False

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def running(self) -> bool:
        return self.status == "running"


class Daemon:
    """Containers of one simulated host, persisted under `root`."""

    def __init__(self, root: Path, board: GpuBoard, release_delay: float = 0.5) -> None:
        self.root = root
        self.board = board
        self.release_delay = release_delay
        # GPU memory left held by a stopped container's process (hold_memory_after_stop):
        # outlives the container (`docker rm` does not reach a process outside it) until
        # `free_held_memory`. By container id.
        self.held_after_stop: dict[str, GpuLoad] = {}
        self._ready_scanned: dict[str, int] = {}  # container id: stdout bytes looked at
        self.logs_dir = root / "containers"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.registry = root / "containers.json"
        self.containers: dict[str, Container] = {}
        self.images: set[str] = set()
        # The host's platform as docker names it (GOARCH: amd64, arm64), and the
        # architecture each pulled image was pulled for (docker_images.pull).
        self.arch = "amd64"
        self.image_archs: dict[str, str] = {}
        # How long pulls and model loads take (quick, or realistic × a time scale).
        self.timing = SimTiming()
        # Device nodes on the host, for `docker run --device` (HostSpec.device_paths).
        self.devices: frozenset[str] = frozenset()
        self._load()

    # -- registry ----------------------------------------------------------------------
    def _load(self) -> None:
        if not self.registry.exists():
            return
        data = json.loads(self.registry.read_text())
        self.images = set(data.get("images", []))
        self.image_archs = dict(data.get("image_archs", {}))
        for raw in data.get("containers", []):
            container = Container(**raw)
            self.containers[container.id] = container
        self.refresh()  # re-adopt the living, mark the dead exited

    def save(self) -> None:
        data = {
            "images": sorted(self.images),
            "image_archs": self.image_archs,
            "containers": [asdict(c) for c in self.containers.values()],
        }
        tmp = self.registry.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.registry)

    def find(self, ref: str) -> Container | None:
        """By name (with or without the leading /), full id, or unique id prefix."""
        name = ref.removeprefix("/")
        for container in self.containers.values():
            if container.name == name or container.id == ref:
                return container
        matches = [c for c in self.containers.values() if ref and c.id.startswith(ref)]
        return matches[0] if len(matches) == 1 else None

    def by_name(self, name: str) -> Container | None:
        return next((c for c in self.containers.values() if c.name == name), None)

    def has_device(self, path: str) -> bool:
        """A device node of the host, or a directory with device nodes under it."""
        wanted = posixpath.normpath(path)
        return wanted in self.devices or any(d.startswith(wanted + "/") for d in self.devices)

    def log_paths(self, container: Container) -> tuple[Path, Path]:
        return (
            self.logs_dir / f"{container.id}.stdout.log",
            self.logs_dir / f"{container.id}.stderr.log",
        )

    def add(self, container: Container) -> None:
        self.containers[container.id] = container
        self.save()

    def remove(self, container: Container) -> None:
        self.containers.pop(container.id, None)
        for path in self.log_paths(container):
            path.unlink(missing_ok=True)
        self.save()

    # -- processes ---------------------------------------------------------------------
    def start(self, container: Container, argv: list[str], env: dict[str, str]) -> None:
        """Start the container's process; `env` holds the values, used here and dropped."""
        stdout_path, stderr_path = self.log_paths(container)
        child_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(REPO_ROOT),
            # The container flushes per line itself; this keeps any other output (tracebacks
            # from a crash) from sitting in a buffer, whatever the parent's setting is.
            "PYTHONUNBUFFERED": "1",
            "LANG": "C.UTF-8",
            **env,
        }
        with open(stdout_path, "ab") as out, open(stderr_path, "ab") as err:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=REPO_ROOT,
                env=child_env,
                start_new_session=True,  # survives the SSH session and the simulator
            )
        _CHILDREN[proc.pid] = proc
        container.pid = proc.pid
        container.pid_start = _start_ticks(proc.pid) or 0
        container.status = "running"
        container.started_at = time.time()
        container.finished_at = None
        container.exit_code = 0
        container.ready = False
        self.save()

    def refresh(self) -> bool:
        """Notice exits and readiness; remove `--rm` containers. True when anything changed."""
        changed = False
        for container in list(self.containers.values()):
            if not container.running:
                continue
            exit_code = _exit_code(container.pid, container.pid_start)
            if exit_code is None:
                if not container.ready and self._logged_ready(container):
                    container.ready = changed = True
                continue
            changed = True
            container.status = "exited"
            container.exit_code = exit_code
            container.finished_at = time.time()
            if container.hold_memory_after_stop and container.ready and container.vram_mib:
                self.held_after_stop[container.id] = GpuLoad(
                    tuple(container.gpu_indices), container.vram_mib, container.pid
                )
            if container.options.get("auto_remove"):
                self.containers.pop(container.id, None)
                for path in self.log_paths(container):
                    path.unlink(missing_ok=True)
        if changed:
            self.save()
        return changed

    def _logged_ready(self, container: Container) -> bool:
        """Whether the container's stdout has its ready line, read from where the last
        look ended (a container that floods its log is never read whole)."""
        stdout_path, _ = self.log_paths(container)
        offset = self._ready_scanned.get(container.id, 0)
        try:
            with open(stdout_path, "rb") as handle:
                handle.seek(offset)
                carry = b""
                while chunk := handle.read(READY_SCAN_CHUNK):
                    window = carry + chunk
                    if any(line in window for line in READY_LINES_BYTES):
                        return True
                    offset += len(chunk)
                    carry = window[-READY_SCAN_OVERLAP:]
        except FileNotFoundError:
            return False
        # A ready line cut in two by this look's end is found whole by the next one.
        self._ready_scanned[container.id] = max(0, offset - READY_SCAN_OVERLAP)
        return False

    def send_signal(self, container: Container, signum: int) -> None:
        try:
            os.killpg(container.pid, signum)  # the container leads its own session
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(container.pid, signum)

    async def stop(
        self, container: Container, timeout: float, signum: int = signal.SIGTERM
    ) -> None:
        """docker stop: the signal, up to `timeout` s (negative: forever), then SIGKILL."""
        self.refresh()
        if not container.running:
            return
        self.send_signal(container, signum)
        deadline = None if timeout < 0 else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            if _exit_code(container.pid, container.pid_start) is not None:
                break
            await asyncio.sleep(0.02)
        else:
            self.send_signal(container, signal.SIGKILL)
        while _exit_code(container.pid, container.pid_start) is None:
            await asyncio.sleep(0.02)
        self.refresh()

    async def kill_all(self, grace: float = 2.0) -> None:
        """Stop every running container (test teardown); SIGKILL after `grace` seconds."""
        running = [c for c in self.containers.values() if c.running]
        await asyncio.gather(*(self.stop(c, grace) for c in running))

    # -- GPUs --------------------------------------------------------------------------
    def loads(self) -> list[GpuLoad]:
        """GPU memory held now: ready containers, and stopped ones until memory is freed."""
        self.refresh()
        now = time.time()
        loads = []
        for c in self.containers.values():
            if not (c.gpu_indices and c.vram_mib and c.ready):
                continue
            freed_at = (c.finished_at or now) + self.release_delay
            if c.id not in self.held_after_stop and (c.running or now < freed_at):
                # A sleeping vLLM holds less (or host RAM instead): sleep_state.
                asleep = read_sleep(c.id, c.pid, self.log_paths(c)[0])
                loads.append(held(tuple(c.gpu_indices), c.vram_mib, c.pid, asleep, self.board))
        return loads + list(self.held_after_stop.values())

    def free_held_memory(self) -> int:
        """Let go of the memory stopped containers' processes kept; how many there were."""
        count = len(self.held_after_stop)
        self.held_after_stop.clear()
        return count

    def new_id(self) -> str:
        return secrets.token_hex(32)


def container_argv(app_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "arbiter.simulator.container", *app_args]


def failing_argv(
    stdout_lines: list[str], stderr_lines: list[str], delay: float, status: int = 1
) -> list[str]:
    """A process that logs like vLLM starting, then fails with `stderr_lines` and `status`."""
    payload = json.dumps(
        {"out": stdout_lines, "err": stderr_lines, "delay": delay, "status": status}
    )
    return [sys.executable, "-c", _FAIL_SCRIPT, payload]


def _start_ticks(pid: int) -> int | None:
    """Process start time from /proc (field 22), to tell a recycled pid from ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has exited; only its parent has not asked yet
        return None
    return int(fields[19])


def _exit_code(pid: int, start_ticks: int) -> int | None:
    """None while the process runs; else its exit code in docker's convention."""
    proc = _CHILDREN.get(pid)
    if proc is not None:
        code = proc.poll()  # reaps once, then keeps answering with the same code
        if code is None:
            return None
        return 128 - code if code < 0 else code
    ticks = _start_ticks(pid)
    if ticks is not None and (not start_ticks or ticks == start_ticks):
        return None
    try:  # a child whose Popen this process lost: collect its status ourselves
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code
    except ChildProcessError:
        pass
    return LOST_EXIT_CODE
