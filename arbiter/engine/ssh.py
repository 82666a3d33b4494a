"""The one module that speaks SSH.

One persistent connection per host, opened on first use and re-opened when it drops.
Commands are always given as an argv list and joined with shell quoting here, so no
caller can build a command line by string concatenation. Host keys are checked
strictly: an unknown or changed key fails closed with the fingerprint in the error.

Session budget: OpenSSH serves at most `MaxSessions` (default 10) channels on one
connection and refuses the next one at channel open (openssh-portable servconf.h
DEFAULT_SESSIONS_MAX; session.c session_new returns NULL, serverloop.c
server_input_channel_open answers SSH2_MSG_CHANNEL_OPEN_FAILURE "open failed" with
reason SSH2_OPEN_CONNECT_FAILED since 7.5, ADMINISTRATIVELY_PROHIBITED before). So each
host gets a semaphore of `max_ssh_sessions` (default 8) held for the life of a run or a
stream, and a channel refused anyway (sessions of other clients, a slow close) waits
and retries with a short backoff on the same connection: only a lost connection is
forgotten.
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
# Streams hold bounded memory whatever a command prints: at most this many lines wait
# between the readers and the consumer (past it the readers stop reading, and SSH's flow
# control pauses the remote command), a line longer than MAX_LINE_CHARS is cut there and
# the rest of it skipped as it arrives, and stdout/stderr are read in READ_CHUNK_CHARS.
STREAM_QUEUE_LINES = 2000
MAX_LINE_CHARS = 16_384
READ_CHUNK_CHARS = 65_536
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_MAX_SESSIONS = 8  # under OpenSSH's MaxSessions 10: room for a person's own ssh
# A refused channel is retried after 0.05, 0.1, 0.2 ... 1 s, for at most this long when
# the caller set no timeout of its own.
SESSION_RETRY_FIRST = 0.05
SESSION_RETRY_MAX = 1.0
SESSION_WAIT_SECONDS = 60.0
CLOSE_WAIT_SECONDS = 2.0
# Channel-open refusals that mean "not now" rather than "never": OpenSSH's MaxSessions
# answer (CONNECT_FAILED since 7.5, ADMINISTRATIVELY_PROHIBITED before) and a server
# short of resources.
_REFUSED_CODES = frozenset(
    {
        asyncssh.OPEN_CONNECT_FAILED,
        asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
        asyncssh.OPEN_RESOURCE_SHORTAGE,
    }
)


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
    max_ssh_sessions: int = DEFAULT_MAX_SESSIONS

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
            max_ssh_sessions=host.max_ssh_sessions or DEFAULT_MAX_SESSIONS,
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
    rather than silently truncating an argument. Nor can text that is not UTF-8 (a lone
    surrogate, which a JSON `\\ud800` escape gives): the SSH exec request carries the
    command as UTF-8 (RFC 4254 §6.5; asyncssh encodes it strictly), so it is refused
    here, before a session is opened, not halfway through opening one.
    """
    if isinstance(argv, str) or not argv:
        raise ValueError("argv must be a non-empty list of strings")
    for arg in argv:
        if not isinstance(arg, str):
            raise ValueError(f"argv items must be strings, got {type(arg).__name__}")
        if "\x00" in arg:
            raise ValueError("argv items must not contain NUL bytes")
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("argv items must be valid UTF-8 text") from None
    return shlex.join(argv)


def _tail(text: str) -> str:
    return text[-STDERR_TAIL_CHARS:]


class SshPool:
    """Persistent connections, one per host, for one event loop."""

    def __init__(self) -> None:
        self._connections: dict[str, tuple[SshTarget, asyncssh.SSHClientConnection]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Per host: (budget, semaphore); a changed budget gets a new semaphore (channels
        # already open keep the old one until they close).
        self._budgets: dict[str, tuple[int, asyncio.Semaphore]] = {}
        self.refused_channels = 0  # channel opens the server refused (then retried)

    def _budget(self, target: SshTarget) -> asyncio.Semaphore:
        size = max(1, target.max_ssh_sessions)
        entry = self._budgets.get(target.name)
        if entry is None or entry[0] != size:
            entry = self._budgets[target.name] = (size, asyncio.Semaphore(size))
        return entry[1]

    @contextlib.asynccontextmanager
    async def session_slot(self, target: SshTarget) -> AsyncIterator[None]:
        """Hold one of the host's `max_ssh_sessions` slots (for a run or a stream)."""
        async with self._budget(target):
            yield

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
        self,
        target: SshTarget,
        command: str,
        env: dict[str, str] | None,
        deadline: float | None = None,
    ) -> asyncssh.SSHClientProcess:
        """Open a session on the shared connection.

        A refused channel (the server's MaxSessions, counting sessions we do not see)
        waits and retries on the same connection; a connection that died under us is
        forgotten and re-opened once.
        """
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + SESSION_WAIT_SECONDS
        delay = SESSION_RETRY_FIRST
        reconnected = False
        while True:
            conn = await self._connection(target)
            try:
                return await conn.create_process(command, env=env or {}, encoding="utf-8")
            except asyncssh.ChannelOpenError as exc:
                if exc.code in _REFUSED_CODES and not conn.is_closed():
                    self.refused_channels += 1
                    if loop.time() + delay > deadline:
                        raise CommandTimeout(
                            target.name,
                            f"the SSH server kept refusing a new session ({exc.reason}); "
                            "is its MaxSessions below max_ssh_sessions?",
                        ) from exc
                    log.debug("%s: session refused (%s), retrying", target.name, exc.reason)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, SESSION_RETRY_MAX)
                    continue
                if not conn.is_closed():  # refused for good; the connection is fine
                    raise HostUnreachable(
                        target.name, f"the SSH server refused a session: {exc.reason}"
                    ) from exc
                lost: Exception = exc
            except (asyncssh.ConnectionLost, asyncssh.DisconnectError, OSError) as exc:
                lost = exc
            await self._forget_connection(target.name, conn)
            if reconnected:
                raise HostUnreachable(target.name, f"connection lost: {lost}") from lost
            reconnected = True

    async def _forget_connection(self, host_name: str, conn: asyncssh.SSHClientConnection) -> None:
        """Forget `conn` only if it is still the cached one (a newer one may replace it)."""
        entry = self._connections.get(host_name)
        if entry is not None and entry[1] is conn:
            await self.forget(host_name)

    @staticmethod
    async def _close(process: asyncssh.SSHClientProcess) -> None:
        # Wait (briefly) for the close handshake so the server has freed the session
        # before our slot is given to the next caller.
        process.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_WAIT_SECONDS):
                await process.wait_closed()

    async def probe_sessions(
        self, target: SshTarget, count: int, timeout: float = 15.0
    ) -> tuple[int, str]:
        """How many sessions one fresh connection holds at once (up to `count`).

        Opens `cat` sessions (each waits on stdin, so they stay open together) on a
        connection of its own, so the pool's channels neither count nor suffer; returns
        the number accepted and the server's reason for the first refusal ("" if none).
        This is what MaxSessions governs, measured rather than read: `sshd -T` needs root.
        """
        conn = await self._connect(target)
        processes: list[asyncssh.SSHClientProcess] = []
        refused = ""
        try:
            async with asyncio.timeout(timeout):
                for _ in range(count):
                    try:
                        process = await conn.create_process(join_argv(["cat"]), encoding="utf-8")
                    except asyncssh.ChannelOpenError as exc:
                        refused = exc.reason or f"channel open failed (code {exc.code})"
                        break
                    processes.append(process)
        except TimeoutError as exc:
            raise CommandTimeout(target.name, f"opening sessions took over {timeout:g} s") from exc
        except (asyncssh.ConnectionLost, asyncssh.DisconnectError, OSError) as exc:
            raise HostUnreachable(target.name, f"connection lost: {exc}") from exc
        finally:
            for process in processes:
                with contextlib.suppress(Exception):
                    process.stdin.write_eof()
                process.close()
            conn.close()
            with contextlib.suppress(Exception):
                await conn.wait_closed()
        return len(processes), refused

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
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            async with asyncio.timeout(timeout), self.session_slot(target):
                process = await self._open_process(target, command, env, deadline)
                try:
                    stdout, stderr = await process.communicate(input)
                    await process.wait()
                finally:
                    await self._close(process)
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
        **kwargs,
    ) -> AsyncGenerator[tuple[str, str], None]:
        """Yield ("stdout" | "stderr", line) as lines arrive on either stream.

        Lines keep their order within a stream; across the two streams they come in
        arrival order. Errors as for `stream`.
        """
        batches = self.stream_batches(target, argv, **kwargs)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                for item in batch:
                    yield item

    async def stream_batches(
        self,
        target: SshTarget,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
        max_line_chars: int = MAX_LINE_CHARS,
    ) -> AsyncGenerator[list[tuple[str, str]], None]:
        """As `stream_both`, but each item is every line that had arrived (at least
        one): a flood of output comes in big batches, a trickle line by line. A line
        longer than `max_line_chars` is cut there and marked (see `bounded_lines`)."""
        command = join_argv(argv)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        budget = self._budget(target)
        try:
            async with asyncio.timeout(timeout):
                await budget.acquire()
        except TimeoutError as exc:
            raise CommandTimeout(
                target.name, f"{argv[0]} did not finish within {timeout:g} s"
            ) from exc
        try:
            process = await self._open_process(target, command, env, deadline)
        except BaseException:
            budget.release()
            raise
        # Unbounded queue, bounded by `room`: a reader takes a slot per line and waits
        # when none is left; the end-of-stream marks need no slot, so they always fit.
        queue: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()
        room = asyncio.Semaphore(STREAM_QUEUE_LINES)
        stderr_tail: list[str] = []

        async def pump(name: str, reader: asyncssh.SSHReader) -> None:
            try:
                async for line in bounded_lines(reader, max_line_chars):
                    await room.acquire()
                    queue.put_nowait((name, line))
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
                        first = await queue.get()
                except TimeoutError as exc:
                    raise CommandTimeout(
                        target.name, f"{argv[0]} did not finish within {timeout:g} s"
                    ) from exc
                batch: list[tuple[str, str]] = []
                item: tuple[str, str | None] | None = first
                while item is not None:
                    name, line = item
                    if line is None:
                        open_streams -= 1
                    else:
                        room.release()
                        if name == "stderr":
                            stderr_tail.append(line)
                            del stderr_tail[:-50]
                        batch.append((name, line))
                    item = queue.get_nowait() if not queue.empty() else None
                if batch:
                    yield batch
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
            try:
                await self._close(process)
            finally:
                budget.release()


async def bounded_lines(reader: asyncssh.SSHReader, max_chars: int) -> AsyncIterator[str]:
    """The reader's lines without their "\\n", read in chunks so that no line is ever held
    whole: a line longer than `max_chars` is yielded cut there, with a marker saying so,
    and the rest of it is dropped as it arrives."""
    partial = ""
    cut = False  # the current line was already cut: drop what is left of it
    while chunk := await reader.read(READ_CHUNK_CHARS):
        pieces = (partial + chunk).split("\n")
        partial = pieces.pop()
        for piece in pieces:
            if cut:
                cut = False  # this piece is the cut line's end
                continue
            yield _cut(piece, max_chars) if len(piece) > max_chars else piece
        if len(partial) > max_chars:
            if not cut:
                yield _cut(partial, max_chars)
                cut = True
            partial = ""
    if partial and not cut:
        yield _cut(partial, max_chars) if len(partial) > max_chars else partial


def _cut(line: str, max_chars: int) -> str:
    return f"{line[:max_chars]} … [line cut at {max_chars} characters]"


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


def stream_batches(
    target: SshTarget, argv: Sequence[str], **kwargs
) -> AsyncGenerator[list[tuple[str, str]], None]:
    """Stream labelled lines in batches of what has arrived (see SshPool.stream_batches)."""
    return get_pool().stream_batches(target, argv, **kwargs)


async def probe_sessions(target: SshTarget, count: int) -> tuple[int, str]:
    """Sessions a fresh connection to the host holds at once (see SshPool.probe_sessions)."""
    return await get_pool().probe_sessions(target, count)


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
