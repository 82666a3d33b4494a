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
from arbiter.simulator.docker_images import ENGINE_VERSION
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


def stop_flags(engine_version: str) -> list[Flag]:
    """`docker stop`'s flags in that release (docker/cli cli/command/container/stop.go):
    `-t, --time` up to 27.x; from 28.0 `-t, --timeout`, `--time` a deprecated alias."""
    if int(engine_version.split(".")[0]) >= 28:
        return [Flag("timeout", "t", "int"), Flag("time", None, "int"), Flag("signal", "s")]
    return [Flag("time", "t", "int"), Flag("signal", "s")]


RM_FLAGS = [Flag("force", "f", "bool"), Flag("volumes", "v", "bool"), Flag("link", "l", "bool")]


# -- logs ------------------------------------------------------------------------------
CHUNK_BYTES = 1 << 20  # a log is printed a MiB at a time, with the SSH channel drained between


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

    def initial(self, tail: int | None, final: bool) -> bool:
        """Print what is written so far (`tail`: only its last lines); True when more is
        left to read (the log is read a chunk at a time, never held whole)."""
        if self.handle is None:
            return False
        if tail is None:
            return self.pump(final, self.mtime)
        text = self.partial + self.decoder.decode(self._last_lines_bytes(tail))
        lines = text.splitlines(keepends=True)
        self.partial = "" if final or not lines or lines[-1].endswith("\n") else lines.pop()
        self.emit(lines[-tail:] if tail else [], self.mtime)
        return False

    def _last_lines_bytes(self, count: int) -> bytes:
        """The file's end holding its last `count` lines, read backwards a chunk at a
        time (as dockerd's tail reader does: moby pkg/tailfile, TailFile reads blocks
        backwards from the end until it has enough newlines), leaving the handle at the end."""
        assert self.handle is not None
        end = self.handle.seek(0, 2)
        start, data = end, b""
        while start > 0 and data.count(b"\n") <= count:
            start = max(0, start - CHUNK_BYTES)
            self.handle.seek(start)
            data = self.handle.read(end - start)
        self.handle.seek(end)
        if start > 0:  # drop the partial first line
            data = data[data.index(b"\n") + 1 :] if b"\n" in data else b""
        return data

    def pump(self, final: bool, moment: float | None = None) -> bool:
        """Print up to CHUNK_BYTES more; True when more may be read at once."""
        if self.handle is None:
            return False
        data = self.handle.read(CHUNK_BYTES)
        more = len(data) == CHUNK_BYTES
        last = final and not more
        text = self.partial + self.decoder.decode(data, final=last)
        lines = text.splitlines(keepends=True)
        self.partial = "" if last or not lines or lines[-1].endswith("\n") else lines.pop()
        self.emit(lines, moment if moment is not None else time.time())
        return more

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
        pending = [log_tail.initial(tail, final=not follow) for log_tail in tails]
        await io.drain()
        while any(pending) and not io.closed():  # the rest of what is written, a chunk at a time
            pending = [
                log_tail.pump(final=not follow) if more else False
                for log_tail, more in zip(tails, pending, strict=True)
            ]
            await io.drain()
        while follow and not io.closed():
            daemon.refresh()
            alive = c.running
            more = True
            while more and not io.closed():
                more = False
                for log_tail in tails:
                    more = log_tail.pump(final=not alive) or more
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
    flags = stop_flags(ENGINE_VERSION)
    parsed = parse_args("stop", argv, flags, io)
    if isinstance(parsed, int):
        return parsed
    if any(flag.name == "timeout" for flag in flags) and parsed.given("time"):
        # pflag's deprecation notice; cobra prints it with c.Print, which docker points
        # at its stdout (cmd.SetOut in cmd/docker/docker.go).
        io.out("Flag --time has been deprecated, use --timeout instead\n")
        if parsed.given("timeout"):
            io.err("conflicting options: cannot specify both --timeout and --time\n")
            return 1
    timeout = int(parsed.last("timeout") or parsed.last("time") or 10)
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
