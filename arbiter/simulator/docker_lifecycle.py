"""`docker logs`, `docker stop` and `docker rm`."""

from __future__ import annotations

import asyncio
import codecs
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from arbiter.simulator.docker_format import rfc3339
from arbiter.simulator.docker_opts import DockerError
from arbiter.simulator.docker_query import no_such_container, parse_args
from arbiter.simulator.dockerd import Container, Daemon
from arbiter.simulator.pflags import Flag
from arbiter.simulator.shell import Io

LOGS_FLAGS = [
    Flag("follow", "f", "bool"),
    Flag("tail", "n"),
    Flag("timestamps", "t", "bool"),
    Flag("since"),
    Flag("until"),
    Flag("details", None, "bool"),
]
STOP_FLAGS = [Flag("time", "t", "int"), Flag("timeout", None, "int"), Flag("signal", "s")]
RM_FLAGS = [Flag("force", "f", "bool"), Flag("volumes", "v", "bool"), Flag("link", "l", "bool")]


# -- logs ------------------------------------------------------------------------------
class LogTail:
    """Follows one log file through an open handle (it may be unlinked by --rm meanwhile)."""

    def __init__(self, path: Path, write: Callable[[str], None], timestamps: bool) -> None:
        self.write = write
        self.timestamps = timestamps
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.partial = ""
        try:
            self.handle: IO[bytes] | None = open(path, "rb")  # noqa: SIM115 (closed in close())
            self.mtime = path.stat().st_mtime
        except FileNotFoundError:
            self.handle, self.mtime = None, time.time()

    def initial(self, tail: int | None, final: bool) -> None:
        if self.handle is None:
            return
        text = self.partial + self.decoder.decode(self.handle.read())
        lines = text.splitlines(keepends=True)
        self.partial = "" if final or not lines or lines[-1].endswith("\n") else lines.pop()
        if tail is not None:
            lines = lines[-tail:] if tail else []
        self.emit(lines, self.mtime)

    def pump(self, final: bool) -> None:
        if self.handle is None:
            return
        text = self.partial + self.decoder.decode(self.handle.read(), final=final)
        lines = text.splitlines(keepends=True)
        self.partial = "" if final or not lines or lines[-1].endswith("\n") else lines.pop()
        self.emit(lines, time.time())

    def emit(self, lines: list[str], moment: float) -> None:
        if not lines:
            return
        if self.timestamps:
            stamp = rfc3339(moment)
            lines = [f"{stamp} {line}" for line in lines]
        self.write("".join(lines))

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


async def stream_logs(
    daemon: Daemon, c: Container, io: Io, follow: bool, tail: int | None, timestamps: bool
) -> None:
    """Print the logs; with `follow`, keep printing until the container exits."""
    stdout_path, stderr_path = daemon.log_paths(c)
    tails = [LogTail(stdout_path, io.out, timestamps), LogTail(stderr_path, io.err, timestamps)]
    try:
        for log_tail in tails:
            log_tail.initial(tail, final=not follow)
        await io.drain()
        while follow and not io.closed():
            daemon.refresh()
            alive = c.running
            for log_tail in tails:
                log_tail.pump(final=not alive)
            await io.drain()
            if not alive:
                break
            await asyncio.sleep(0.05)
    finally:
        for log_tail in tails:
            log_tail.close()


async def logs(daemon: Daemon, argv: list[str], io: Io) -> int:
    parsed = parse_args("logs", argv, LOGS_FLAGS, io)
    if isinstance(parsed, int):
        return parsed
    ref = parsed.args[0]
    container = daemon.find(ref)
    if container is None:
        no_such_container(io, ref)
        return 1
    raw_tail = parsed.last("tail", "all") or "all"
    # dockerd treats anything that is not a number as "all".
    tail = int(raw_tail) if re.fullmatch(r"\d+", raw_tail) else None
    await stream_logs(daemon, container, io, parsed.flag("follow"), tail, parsed.flag("timestamps"))
    return 0


# -- stop / rm -------------------------------------------------------------------------
def parse_signal(text: str) -> int:
    name = text.upper()
    if name.isdigit():
        return int(name)
    try:
        return int(signal.Signals[name if name.startswith("SIG") else f"SIG{name}"])
    except KeyError:
        raise DockerError(f"Error response from daemon: Invalid signal: {text}", 1) from None


async def stop(daemon: Daemon, argv: list[str], io: Io) -> int:
    parsed = parse_args("stop", argv, STOP_FLAGS, io)
    if isinstance(parsed, int):
        return parsed
    timeout = int(parsed.last("time") or parsed.last("timeout") or 10)
    try:
        signum = parse_signal(parsed.last("signal") or "SIGTERM")
    except DockerError as error:
        io.err(f"{error}\n")
        return error.status

    async def one(ref: str) -> bool:
        container = daemon.find(ref)
        if container is None:
            return False
        await daemon.stop(container, timeout, signum)
        return True

    results = await asyncio.gather(*(one(ref) for ref in parsed.args))
    for ref, ok in zip(parsed.args, results, strict=True):
        if ok:
            io.out(f"{ref}\n")
        else:
            no_such_container(io, ref)
    return 0 if all(results) else 1


async def rm(daemon: Daemon, argv: list[str], io: Io) -> int:
    parsed = parse_args("rm", argv, RM_FLAGS, io)
    if isinstance(parsed, int):
        return parsed
    daemon.refresh()
    status = 0
    for ref in parsed.args:
        container = daemon.find(ref)
        if container is None:
            no_such_container(io, ref)
            status = 1
            continue
        if container.running:
            if not parsed.flag("force"):
                io.err(
                    f'Error response from daemon: cannot remove container "/{container.name}": '
                    "container is running: stop the container before removing or force remove\n"
                )
                status = 1
                continue
            await daemon.stop(container, 0, signal.SIGKILL)
        daemon.remove(container)
        io.out(f"{ref}\n")
    return status
