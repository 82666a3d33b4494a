"""A catalog model's files on a host: present or not, how big, download, delete.

Everything goes through the one SSH seam (`arbiter.engine.ssh`) as argv lists, and every
path is re-checked here right before use: the catalog row may be older than today's
rules, and a symlink on the host may point anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypedDict, cast

from arbiter.engine import ssh
from arbiter.engine.host_paths import host_hub_cache
from arbiter.engine.ssh import SshTarget
from arbiter.errors import ArbiterError, InvalidInput, SshError
from catalog.validation import (
    Bad,
    check_hub_repo,
    check_hub_revision,
    is_inside,
    normalize_local_path,
)

if TYPE_CHECKING:
    from catalog.models import CatalogModel

DISK_COMMAND_TIMEOUT = 60.0  # `du` over a few large files is quick; a dead disk is not
DELETE_TIMEOUT = 300.0
# On real hosts `hf download` draws its progress bars on stderr, which a stream of
# stdout lines never sees: when the command is quiet this long, report the size of the
# cache folder instead, so a long download never looks stuck.
PROGRESS_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class DiskStatus:
    """Whether a model's files are on a host, and their apparent size in bytes."""

    host: str
    path: str
    present: bool
    size_bytes: int | None
    detail: str = ""


def hub_cache_folder(repo: str, cache_dir: str) -> str:
    """`<cache_dir>/models--org--name`, the Hugging Face cache layout."""
    org, name = repo.split("/", 1)
    return posixpath.join(cache_dir, f"models--{org}--{name}")


def model_host_path(model: CatalogModel, cache_dir: str) -> str:
    """Where the model's files live on a host: its local path, or its folder in the
    host's hub cache (`arbiter.engine.host_paths`; "" while that is not known)."""
    if model.local_path:
        return model.local_path
    return hub_cache_folder(model.hub_repo, cache_dir) if cache_dir else ""


# The hub CLI: `hf` (huggingface_hub setup.py console_scripts hf=huggingface_hub.cli.hf:main)
# is often missing from a non-interactive SSH PATH (pip --user / pipx / uv tool put it in
# ~/.local/bin, which only login shells add); the same CLI runs as a module then
# (huggingface_hub/cli/hf.py ends in `if __name__ == "__main__": main()`).
HF_ARGV = ["hf"]
HF_MODULE_ARGV = ["python3", "-m", "huggingface_hub.cli.hf"]


async def hub_cli(target: SshTarget) -> list[str]:
    """`hf` when the host's non-interactive shell finds it, else `python3 -m ...`."""
    found = await ssh.run(
        target, ["command", "-v", "hf"], timeout=DISK_COMMAND_TIMEOUT, check=False
    )
    return list(HF_ARGV) if found.exit_status == 0 else list(HF_MODULE_ARGV)


def _parse_du(stdout: str) -> int | None:
    # `du -sb -- PATH` prints "SIZE<TAB>PATH"; anything else means we learned nothing.
    first = stdout.strip().split(None, 1)
    try:
        return int(first[0]) if first else None
    except ValueError:
        return None


def _failure_detail(stderr: str, tool: str, exit_status: int) -> str:
    # The common case reads better short: "not found" instead of du's whole sentence.
    if "No such file or directory" in stderr:
        return "not found"
    return stderr.strip() or f"{tool} exited with status {exit_status}"


async def _du(target: SshTarget, path: str) -> tuple[int | None, str]:
    result = await ssh.run(
        target, ["du", "-sb", "--", path], timeout=DISK_COMMAND_TIMEOUT, check=False
    )
    if result.exit_status != 0:
        return None, _failure_detail(result.stderr, "du", result.exit_status)
    return _parse_du(result.stdout), ""


async def model_disk_status(
    target: SshTarget, host_path: str, *, local: bool, roots: list[str]
) -> DiskStatus:
    """Present / absent / size of `host_path` on one host.

    Local paths are resolved on the host first (`realpath -e`), and the resolved path
    must still be inside a root: a symlink inside /models pointing at /etc counts as
    absent with a clear detail, so a swap preflight fails on it. SSH failures
    (unreachable host, rejected host key, timeout) are raised as `SshError`: the caller
    decides whether that is an entry with an error or a failed check.
    """
    path = host_path
    if local:
        try:
            path = normalize_local_path(host_path, roots)
        except InvalidInput as error:
            return DiskStatus(target.name, host_path, False, None, error.message)
        resolved = await ssh.run(
            target, ["realpath", "-e", "--", path], timeout=DISK_COMMAND_TIMEOUT, check=False
        )
        if resolved.exit_status != 0:
            detail = _failure_detail(resolved.stderr, "realpath", resolved.exit_status)
            return DiskStatus(target.name, path, False, None, detail)
        real = resolved.stdout.strip()
        try:
            real = normalize_local_path(real, roots)
        except InvalidInput:
            return DiskStatus(
                target.name,
                path,
                False,
                None,
                f"{path} resolves to {real!r}, outside the allowed model roots "
                f"({', '.join(roots)}); refusing to use it",
            )
        requested, path = path, real
        detail = f"{requested} resolves to {real}" if real != requested else ""
    else:
        detail = ""
    size, problem = await _du(target, path)
    if size is None:
        return DiskStatus(target.name, path, False, None, problem or "not found")
    return DiskStatus(target.name, path, True, size, detail)


def _checked_hub_args(repo: str, revision: str) -> tuple[str, str]:
    """The repo and revision re-checked right before they become argv items."""
    checked = []
    for field, check, value in (
        ("hub_repo", check_hub_repo, repo),
        ("hub_revision", check_hub_revision, revision),
    ):
        try:
            checked.append(check(value))
        except Bad as error:
            raise InvalidInput(f"{field}: {error.reason}", field=field) from None
    if not checked[0]:
        raise InvalidInput("hub_repo: is required", field="hub_repo")
    return checked[0], checked[1]


def _human(size: int) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    value, index = float(size), 0
    while value >= 1024 and index < len(units) - 1:
        value, index = value / 1024, index + 1
    return f"{value:.1f} {units[index]}"


async def download_hub_model(
    target: SshTarget, repo: str, revision: str, cache_dir: str, token: str
) -> AsyncIterator[str]:
    """Run `hf download` on the host and yield its progress lines as they arrive.

    The token travels in the SSH session's environment (HF_TOKEN), never in the argv:
    a real sshd must list it in `AcceptEnv`. A failed download raises CommandFailed
    (with hf's message) after the last line.
    """
    repo, revision = _checked_hub_args(repo, revision)
    argv = [*await hub_cli(target), "download", repo]
    if revision:
        argv += ["--revision", revision]
    argv += ["--cache-dir", cache_dir]
    env = {"HF_TOKEN": token} if token else None
    folder = hub_cache_folder(repo, cache_dir)
    lines = cast(AsyncGenerator[str, None], ssh.stream(target, argv, env=env))
    pending: asyncio.Future[str] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(_next_line(lines))
            # Waiting with asyncio.wait (not wait_for) keeps the pending read alive: a
            # cancelled __anext__ would close the remote stream.
            done, _ = await asyncio.wait({pending}, timeout=PROGRESS_POLL_SECONDS)
            if not done:
                with contextlib.suppress(SshError):
                    size, _problem = await _du(target, folder)
                    if size is not None:
                        yield f"downloaded so far: {_human(size)}"
                continue
            try:
                line = pending.result()
            except StopAsyncIteration:
                return
            finally:
                pending = None
            if line.strip():
                yield line
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        await lines.aclose()


async def _next_line(lines: AsyncGenerator[str, None]) -> str:
    return await anext(lines)


async def delete_hub_model(target: SshTarget, model: CatalogModel) -> None:
    """Remove a hub model's cache folder from the host. Local models are never deleted."""
    if model.local_path or not model.hub_repo:
        raise InvalidInput("local models are never deleted by Arbiter", field="key")
    _checked_hub_args(model.hub_repo, model.hub_revision)
    cache_dir = await host_hub_cache(target)
    path = model_host_path(model, cache_dir)
    # Belt and braces: the folder must sit strictly below the cache dir before `rm -rf`.
    if not (cache_dir.startswith("/") and is_inside(path, cache_dir)):
        raise InvalidInput(f"refusing to delete {path!r}: not inside {cache_dir}", field="key")
    await ssh.run(target, ["rm", "-rf", "--", path], timeout=DELETE_TIMEOUT)


DownloadEvent = tuple[str, dict[str, Any]]


async def download_events(
    target: SshTarget, key: str, repo: str, revision: str, token: str
) -> AsyncIterator[DownloadEvent]:
    """A hub download as events, for the API's stream and the catalog page's log:
    ("start", ...), ("progress", {"line"}) per line, then ("done", the host's new disk
    status) or ("error", the error's body, the host named). Failures end the events, not
    the caller. Plain values only: nothing here holds an ORM object across an await."""
    yield "start", {"host": target.name, "model": key, "repo": repo}
    try:
        cache_dir = await host_hub_cache(target)  # this host's own hub cache
        async for line in download_hub_model(target, repo, revision, cache_dir, token):
            yield "progress", {"line": line}
        folder = hub_cache_folder(repo, cache_dir)
        status = await model_disk_status(target, folder, local=False, roots=[])
    except ArbiterError as error:
        yield "error", {"host": target.name, "model": key, **error.as_body()["error"]}
        return
    yield "done", {"model": key, **asdict(status)}


class DiskEntry(TypedDict):
    """One host's answer for the API and the catalog page (`present` None: not asked)."""

    host: str
    path: str
    present: bool | None
    size_bytes: int | None
    detail: str
    error: str | None


async def _entry(target: SshTarget, host_path: str, local: bool, roots: list[str]) -> DiskEntry:
    try:
        if not local:  # `host_path` is the hub repo: its folder in this host's cache
            host_path = hub_cache_folder(host_path, await host_hub_cache(target))
        status = await model_disk_status(target, host_path, local=local, roots=roots)
    except ArbiterError as error:  # unreachable, host key rejected, timeout ...
        return DiskEntry(
            host=target.name,
            path=host_path,
            present=None,
            size_bytes=None,
            detail="",
            error=f"{error.error_type}: {error.message}",
        )
    except (OSError, ValueError) as error:  # e.g. an unreadable known_hosts file
        return DiskEntry(
            host=target.name,
            path=host_path,
            present=None,
            size_bytes=None,
            detail="",
            error=f"ssh_error: {error}",
        )
    return DiskEntry(
        host=status.host,
        path=status.path,
        present=status.present,
        size_bytes=status.size_bytes,
        detail=status.detail,
        error=None,
    )


async def disk_report(
    targets: list[SshTarget], model: CatalogModel, *, roots: list[str]
) -> list[DiskEntry]:
    """Every host's status, asked concurrently; a failing host is an entry with `error`.

    A local model is looked for at its path; a hub model in each host's own hub cache.
    """
    where = model.local_path or model.hub_repo
    local = bool(model.local_path)
    return list(await asyncio.gather(*(_entry(t, where, local, roots) for t in targets)))
