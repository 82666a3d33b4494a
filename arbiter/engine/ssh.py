"""The one module that speaks SSH.

One persistent connection per host, opened on first use and re-opened when it drops.
Commands are always given as an argv list and joined with shell quoting here, so no
caller can build a command line by string concatenation. Host keys are checked
strictly: an unknown or changed key fails closed with the fingerprint in the error.
"""

import asyncio
import contextlib
import logging
import shlex
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import asyncssh

from arbiter.errors import (
    CommandFailed,
    CommandTimeout,
    HostKeyRejected,
    HostUnreachable,
    SshAuthFailed,
)

if TYPE_CHECKING:
    from arbiter.models import Host

log = logging.getLogger(__name__)

STDERR_TAIL_CHARS = 2000
DEFAULT_CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class SshTarget:
    """Everything needed to reach one host; a plain value so no ORM object crosses an await."""

    name: str
    address: str
    port: int = 22
    user: str = "arbiter"
    key_path: str = ""
    known_hosts_file: str = ""
    trusted_keys: tuple[str, ...] = ()
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT

    @classmethod
    def from_host(
        cls, host: "Host", connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    ) -> "SshTarget":
        return cls(
            name=host.name,
            address=host.address,
            port=host.ssh_port,
            user=host.ssh_user,
            key_path=host.ssh_key,
            known_hosts_file=host.known_hosts,
            trusted_keys=tuple(
                line.strip() for line in host.trusted_host_keys.splitlines() if line.strip()
            ),
            connect_timeout=connect_timeout,
        )

    @property
    def known_hosts_pattern(self) -> str:
        """How OpenSSH names this host in known_hosts (`[addr]:port` unless port 22)."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    def known_hosts(self) -> asyncssh.SSHKnownHosts:
        """The trusted keys: the inventory's known_hosts file plus keys recorded by trust_host."""
        lines: list[str] = []
        if self.known_hosts_file:
            lines.extend(Path(self.known_hosts_file).expanduser().read_text().splitlines())
        lines.extend(f"{self.known_hosts_pattern} {key}" for key in self.trusted_keys)
        return asyncssh.import_known_hosts("\n".join(lines) + "\n")

    def trusted_fingerprints(self) -> list[str]:
        host_keys, _ca_keys, *_ = asyncssh.match_known_hosts(
            self.known_hosts(), self.address, self.address, self.port
        )
        return [key.get_fingerprint() for key in host_keys]


@dataclass
class CommandResult:
    """What a finished remote command left behind."""

    argv: list[str]
    exit_status: int
    stdout: str
    stderr: str = field(repr=False)


def join_argv(argv: Sequence[str]) -> str:
    """Quote every argument so the remote shell sees exactly this argv.

    A NUL byte cannot travel through a shell command line at all, so it is refused
    rather than silently truncating an argument.
    """
    if isinstance(argv, str) or not argv:
        raise ValueError("argv must be a non-empty list of strings")
    for arg in argv:
        if not isinstance(arg, str):
            raise ValueError(f"argv items must be strings, got {type(arg).__name__}")
        if "\x00" in arg:
            raise ValueError("argv items must not contain NUL bytes")
    return shlex.join(argv)


def _tail(text: str) -> str:
    return text[-STDERR_TAIL_CHARS:]


class SshPool:
    """Persistent connections, one per host, for one event loop."""

    def __init__(self) -> None:
        self._connections: dict[str, tuple[SshTarget, asyncssh.SSHClientConnection]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def close(self) -> None:
        for _target, conn in self._connections.values():
            conn.close()
        for _target, conn in list(self._connections.values()):
            await conn.wait_closed()
        self._connections.clear()

    async def forget(self, host_name: str) -> None:
        """Drop a host's connection, e.g. after its config changed or it went away."""
        entry = self._connections.pop(host_name, None)
        if entry is not None:
            entry[1].close()

    async def _connection(self, target: SshTarget) -> asyncssh.SSHClientConnection:
        lock = self._locks.setdefault(target.name, asyncio.Lock())
        async with lock:
            entry = self._connections.get(target.name)
            if entry is not None:
                cached_target, conn = entry
                if cached_target == target and not conn.is_closed():
                    return conn
                conn.close()
                del self._connections[target.name]
            conn = await self._connect(target)
            self._connections[target.name] = (target, conn)
            return conn

    async def _connect(self, target: SshTarget) -> asyncssh.SSHClientConnection:
        options = dict(
            port=target.port,
            username=target.user,
            known_hosts=target.known_hosts(),
            # Never let ~/.ssh/config or a forwarded agent change who we are or where
            # we connect: the inventory is the whole truth.
            config=None,
            connect_timeout=target.connect_timeout,
            keepalive_interval=15,
            keepalive_count_max=3,
        )
        if target.key_path:
            options["client_keys"] = [str(Path(target.key_path).expanduser())]
            options["agent_path"] = None
        try:
            return await asyncssh.connect(target.address, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise await self._host_key_error(target) from exc
        except asyncssh.PermissionDenied as exc:
            raise SshAuthFailed(
                target.name,
                f"SSH login refused for user {target.user!r} at {target.address}:{target.port} "
                "(check ssh_user and ssh_key)",
            ) from exc
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise HostUnreachable(
                target.name,
                f"cannot connect to {target.address}:{target.port}: {exc or type(exc).__name__}",
            ) from exc

    async def _host_key_error(self, target: SshTarget) -> HostKeyRejected:
        """Name the key the host presented so a person can compare it out of band."""
        try:
            key = await fetch_host_key(target.address, target.port, target.connect_timeout)
            fingerprint = key.get_fingerprint()
        except HostUnreachable:
            fingerprint = "unknown"
        trusted = target.trusted_fingerprints()
        if trusted:
            return HostKeyRejected(
                target.name,
                f"HOST KEY CHANGED: {target.address}:{target.port} presents {fingerprint}, "
                f"but the trusted key is {', '.join(trusted)}. Refusing to connect. If the host "
                f"was reinstalled, verify the new key and run "
                f"`manage.py trust_host {target.name} --replace`.",
                fingerprint=fingerprint,
                changed=True,
            )
        return HostKeyRejected(
            target.name,
            f"unknown host key {fingerprint} at {target.address}:{target.port}. Refusing to "
            f"connect. Verify it and run `manage.py trust_host {target.name}`.",
            fingerprint=fingerprint,
            changed=False,
        )

    async def _open_process(
        self, target: SshTarget, command: str, env: dict[str, str] | None
    ) -> asyncssh.SSHClientProcess:
        """Open a session, reconnecting once if the cached connection died under us."""
        for attempt in (1, 2):
            conn = await self._connection(target)
            try:
                return await conn.create_process(command, env=env or {}, encoding="utf-8")
            except (asyncssh.ChannelOpenError, asyncssh.ConnectionLost, OSError) as exc:
                await self.forget(target.name)
                if attempt == 2:
                    raise HostUnreachable(target.name, f"connection lost: {exc}") from exc
        raise AssertionError("unreachable")  # the loop always returns or raises

    async def run(
        self,
        target: SshTarget,
        argv: Sequence[str],
        *,
        timeout: float,
        input: str | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> CommandResult:
        """Run argv on the host and return its output.

        `env` travels in the SSH protocol (the server must accept it) and `input` on
        stdin: both keep secrets off the command line. On timeout the channel is
        closed; without a pty a real sshd does not kill the remote command, so
        anything long-running must be stopped by its own means (e.g. `docker stop`).
        """
        command = join_argv(argv)
        try:
            async with asyncio.timeout(timeout):
                process = await self._open_process(target, command, env)
                try:
                    stdout, stderr = await process.communicate(input)
                    await process.wait()
                finally:
                    process.close()
        except TimeoutError as exc:
            raise CommandTimeout(
                target.name, f"{argv[0]} did not finish within {timeout:g} s"
            ) from exc
        except asyncssh.ConnectionLost as exc:
            await self.forget(target.name)
            raise HostUnreachable(target.name, f"connection lost: {exc}") from exc
        exit_status = _exit_status(process)
        result = CommandResult(list(argv), exit_status, stdout or "", stderr or "")
        if check and exit_status != 0:
            raise CommandFailed(target.name, list(argv), exit_status, _tail(result.stderr))
        return result

    async def stream(
        self,
        target: SshTarget,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> AsyncIterator[str]:
        """Yield the command's stdout line by line as it arrives (without newlines).

        Closing the iterator early closes the channel. After the last line a non-zero
        exit raises CommandFailed with the stderr tail; `timeout` bounds the whole run.
        """
        lines = self.stream_both(target, argv, timeout=timeout, env=env, check=check)
        async with contextlib.aclosing(lines):
            async for stream_name, line in lines:
                if stream_name == "stdout":
                    yield line

    async def stream_both(
        self,
        target: SshTarget,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> AsyncGenerator[tuple[str, str], None]:
        """Yield ("stdout" | "stderr", line) as lines arrive on either stream.

        Lines keep their order within a stream; across the two streams they come in
        arrival order. Errors as for `stream`.
        """
        command = join_argv(argv)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        process = await self._open_process(target, command, env)
        queue: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()
        stderr_tail: list[str] = []

        async def pump(name: str, reader: asyncssh.SSHReader) -> None:
            try:
                while line := await reader.readline():
                    queue.put_nowait((name, line.rstrip("\n")))
            finally:
                queue.put_nowait((name, None))  # this stream ended

        pumps = [
            asyncio.ensure_future(pump("stdout", process.stdout)),
            asyncio.ensure_future(pump("stderr", process.stderr)),
        ]
        try:
            open_streams = 2
            while open_streams:
                remaining = None if deadline is None else deadline - loop.time()
                try:
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError
                    async with asyncio.timeout(remaining):
                        name, line = await queue.get()
                except TimeoutError as exc:
                    raise CommandTimeout(
                        target.name, f"{argv[0]} did not finish within {timeout:g} s"
                    ) from exc
                if line is None:
                    open_streams -= 1
                    continue
                if name == "stderr":
                    stderr_tail.append(line)
                    del stderr_tail[:-50]
                yield name, line
            for finished in pumps:
                await finished  # surfaces a ConnectionLost from either reader
            await process.wait()
            exit_status = _exit_status(process)
            if check and exit_status != 0:
                raise CommandFailed(
                    target.name, list(argv), exit_status, _tail("\n".join(stderr_tail))
                )
        except asyncssh.ConnectionLost as exc:
            await self.forget(target.name)
            raise HostUnreachable(target.name, f"connection lost: {exc}") from exc
        finally:
            for task in pumps:
                task.cancel()
            process.close()


def _exit_status(process: asyncssh.SSHClientProcess) -> int:
    # A command killed by a signal has no exit status; report it like a shell would.
    if process.exit_status is not None:
        return process.exit_status
    return 128 + 9 if process.exit_signal else -1


# One pool per event loop: connections belong to the loop that opened them.
_pools: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SshPool]" = (
    weakref.WeakKeyDictionary()
)


def get_pool() -> SshPool:
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        pool = _pools[loop] = SshPool()
    return pool


async def run(target: SshTarget, argv: Sequence[str], timeout: float, **kwargs) -> CommandResult:
    """Run argv on a host over its persistent connection (see SshPool.run)."""
    return await get_pool().run(target, argv, timeout=timeout, **kwargs)


def stream(target: SshTarget, argv: Sequence[str], **kwargs) -> AsyncIterator[str]:
    """Stream a command's stdout lines (see SshPool.stream)."""
    return get_pool().stream(target, argv, **kwargs)


def stream_both(
    target: SshTarget, argv: Sequence[str], **kwargs
) -> AsyncGenerator[tuple[str, str], None]:
    """Stream a command's stdout and stderr lines, labelled (see SshPool.stream_both)."""
    return get_pool().stream_both(target, argv, **kwargs)


async def fetch_host_key(
    address: str, port: int, timeout: float = DEFAULT_CONNECT_TIMEOUT
) -> asyncssh.SSHKey:
    """The key a host presents, for a person to compare before trusting it."""
    try:
        async with asyncio.timeout(timeout):
            key = await asyncssh.get_server_host_key(address, port, config=None)
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise HostUnreachable(address, f"cannot connect to {address}:{port}: {exc}") from exc
    if key is None:
        raise HostUnreachable(address, "the server presented no host key")
    return key
