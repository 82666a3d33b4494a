"""A simulated host's file system: absolute paths live under one local directory.

`/models/x` on the host is `<data_dir>/hosts/<name>/fs/models/x` here. Symlinks are
followed inside that root only (an absolute target means the *simulated* root), so a
test can build "escaping" links without the simulator ever touching the real `/etc`.
Big model files are sparse files: `du -b` sees their apparent size, the disk does not.

Ownership is simulated (the simulator runs as whatever user the tests run as): every
path belongs to the SSH user unless recorded otherwise in `owners.json` next to the fs
directory. Containers run as root, so what a container writes into a bind-mounted
directory (and a bind-mount source docker had to create) belongs to root, and the SSH
user can no longer write there: the root-owned cache that breaks the next `hf download`.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

HOME = "/home/arbiter"
# A host that has run Spark recipes has the SSH user's hub cache already.
STANDARD_DIRS = ("/models", HOME, f"{HOME}/.cache/huggingface/hub", "/tmp", "/var/lib/docker")  # noqa: S108, E501
MAX_SYMLINKS = 40  # Linux's ELOOP limit
DIR_APPARENT_BYTES = 4096  # what ext4 reports for a directory; keeps du deterministic


@dataclass(frozen=True)
class DiskSpec:
    """The one file system every simulated path lives on."""

    source: str = "/dev/nvme0n1p2"
    fstype: str = "ext4"
    size_bytes: int = 3_936_812_658_688  # a "4 TB" NVMe as df -B1 shows it
    base_used_bytes: int = 412_316_860_416  # the OS, docker images, caches


class SimFs:
    """Maps simulated absolute paths into `root`, never outside it."""

    def __init__(self, root: Path, disk: DiskSpec | None = None, user: str = "arbiter") -> None:
        self.root = root
        self.disk = disk or DiskSpec()
        self.user = user
        self.home = HOME
        self._owners_path = root.parent / "owners.json"
        try:
            self._owners: dict[str, str] = json.loads(self._owners_path.read_text())
        except (FileNotFoundError, ValueError):
            self._owners = {}
        for path in STANDARD_DIRS:
            self.local(path).mkdir(parents=True, exist_ok=True)
        self._owners.setdefault("/var/lib/docker", "root")

    # -- ownership -----------------------------------------------------------------------
    @staticmethod
    def normalize(path: str) -> str:
        return posixpath.normpath(posixpath.join(HOME, path))

    def owner(self, path: str) -> str:
        """Who owns `path` (the SSH user unless recorded otherwise)."""
        return self._owners.get(self.normalize(path), self.user)

    def set_owner(self, path: str, owner: str, recursive: bool = False) -> None:
        """`chown [-R] OWNER PATH`, for tests and for what containers write."""
        path = self.normalize(path)
        if recursive:
            for known in [p for p in self._owners if is_below(p, path)]:
                del self._owners[known]
            local = self.local(path)
            if local.is_dir():
                for dirpath, dirnames, filenames in os.walk(local):
                    for name in dirnames + filenames:
                        self._record(self._simulated(Path(dirpath) / name), owner)
        self._record(path, owner)
        self._save_owners()

    def _record(self, path: str, owner: str) -> None:
        if owner == self.user:
            self._owners.pop(path, None)
        else:
            self._owners[path] = owner

    def forget_below(self, path: str) -> None:
        """Drop ownership records of a removed tree."""
        path = self.normalize(path)
        for known in [p for p in self._owners if p == path or is_below(p, path)]:
            del self._owners[known]
        self._save_owners()

    def _save_owners(self) -> None:
        self._owners_path.write_text(json.dumps(self._owners, indent=1, sort_keys=True))

    def _simulated(self, local: Path) -> str:
        return "/" + str(local)[len(str(self.root)) :].lstrip("/")

    def writable(self, path: str, user: str | None = None) -> bool:
        """`test -w`: exists and `user` may write it (owner rwx, others r-x: 0755/0644)."""
        user = user or self.user
        local = self.resolve(path)
        if local is None or not local.exists():
            return False
        return user == "root" or self.owner(self._simulated(local)) == user

    def mkdir(self, path: str, owner: str | None = None) -> None:
        """`mkdir -p`: the directories it creates belong to `owner` (default: the user)."""
        path = self.normalize(path)
        missing = []
        probe = path
        while probe != "/" and not self.local(probe).exists():
            missing.append(probe)
            probe = posixpath.dirname(probe)
        self.local(path).mkdir(parents=True, exist_ok=True)
        for created in missing:
            self._record(created, owner or self.user)
        if missing:
            self._save_owners()

    def local(self, path: str) -> Path:
        """The local path for a simulated path, without following symlinks."""
        absolute = posixpath.normpath(posixpath.join(HOME, path))
        return self.root / absolute.lstrip("/")

    def resolve(self, path: str) -> Path | None:
        """Follow symlinks the way the simulated host would; None on a loop."""
        pending = [part for part in posixpath.join(HOME, path).split("/") if part]
        parts: list[str] = []
        hops = 0
        while pending:
            part = pending.pop(0)
            if part == ".":
                continue
            if part == "..":
                parts = parts[:-1]
                continue
            candidate = self.root.joinpath(*parts, part)
            if candidate.is_symlink():
                hops += 1
                if hops > MAX_SYMLINKS:
                    return None
                target = os.readlink(candidate)
                if target.startswith("/"):
                    parts = []
                pending = [p for p in target.split("/") if p] + pending
                continue
            parts.append(part)
        return self.root.joinpath(*parts)

    def kind(self, path: str) -> Literal["file", "dir"] | None:
        local = self.resolve(path)
        if local is None or not local.exists():
            return None
        return "dir" if local.is_dir() else "file"

    def read_text(self, path: str) -> str:
        local = self.resolve(path)
        if local is None or not local.exists():
            raise FileNotFoundError(path)
        if local.is_dir():
            raise IsADirectoryError(path)
        return local.read_text(errors="replace")

    def add_file(
        self, path: str, size: int = 0, content: bytes | None = None, owner: str | None = None
    ) -> Path:
        """Create a file (sparse when only `size` is given); new directories too belong
        to `owner` (default: the SSH user)."""
        local = self.local(path)
        self.mkdir(posixpath.dirname(self.normalize(path)), owner)
        if owner is not None:
            self._record(self.normalize(path), owner)
            self._save_owners()
        with open(local, "wb") as handle:
            if content is not None:
                handle.write(content)
            else:
                handle.truncate(size)
        return local

    def apparent_size(self, path: str) -> int | None:
        local = self.resolve(path)
        if local is None or not local.exists():
            return None
        return tree_size(local)

    def used_bytes(self) -> int:
        return self.disk.base_used_bytes + tree_size(self.root)


class HostFiles:
    """What a session reads: the simulated fs, plus files generated on each read (/proc)."""

    def __init__(self, fs: SimFs, generated: dict[str, Callable[[], str]]) -> None:
        self.fs = fs
        self.generated = generated
        self.generated_dirs = {posixpath.dirname(path) for path in generated}

    def kind(self, path: str) -> Literal["file", "dir"] | None:
        if path in self.generated:
            return "file"
        if path in self.generated_dirs:
            return "dir"
        return self.fs.kind(path)

    def writable(self, path: str) -> bool:
        if path in self.generated or path in self.generated_dirs:
            return False  # /proc files and dirs: root's
        return self.fs.writable(path)

    def read_text(self, path: str) -> str:
        make = self.generated.get(path)
        return make() if make is not None else self.fs.read_text(path)


def is_below(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")


def find(argv: list[str], fs: SimFs, out: Writer, err: Writer) -> int:
    """GNU find for `find DIR... [-maxdepth N] [! -user NAME] [-print] [-quit]`."""
    args = argv[1:]
    paths = []
    while args and not args[0].startswith("-") and args[0] not in ("!", "(", ")"):
        paths.append(args.pop(0))
    maxdepth, negate, user, quit_first = None, False, None, False
    rest = iter(args)
    for arg in rest:
        if arg == "-maxdepth":
            value = next(rest, "")
            if not value.isdigit():
                err(
                    "find: Expected a positive decimal integer argument to -maxdepth, "
                    f"but got '{value}'\n"
                )
                return 1
            maxdepth = int(value)
        elif arg in ("!", "-not"):
            negate = True
        elif arg == "-user":
            user = next(rest, None)
            if user is None:
                err("find: missing argument to `-user'\n")
                return 1
        elif arg == "-print":
            pass
        elif arg == "-quit":
            quit_first = True
        else:
            err(f"sim: find: only -maxdepth, ! -user, -print and -quit are simulated, got {arg}\n")
            return 2
    status = 0
    for start in paths or ["."]:
        local = fs.resolve(start)
        if local is None or not local.exists():
            err(f"find: '{start}': No such file or directory\n")
            status = 1
            continue
        for path, depth in _walk(fs, start, local):
            if maxdepth is not None and depth > maxdepth:
                continue
            matches = user is None or ((fs.owner(fs._simulated(path)) == user) != negate)
            if matches:
                shown = (
                    start if depth == 0 else start.rstrip("/") + "/" + str(path.relative_to(local))
                )
                out(shown + "\n")
                if quit_first:
                    return status
    return status


def _walk(fs: SimFs, start: str, local: Path) -> list[tuple[Path, int]]:
    found = [(local, 0)]
    if local.is_dir():
        for dirpath, dirnames, filenames in os.walk(local):
            dirnames.sort()
            depth = len(Path(dirpath).relative_to(local).parts) + 1
            for name in sorted(dirnames + filenames):
                found.append((Path(dirpath) / name, depth))
    return found


def tree_size(local: Path) -> int:
    """`du -sb`: apparent sizes of files plus a fixed size per directory."""
    if not local.is_dir():
        return local.lstat().st_size
    total = 0
    for _dirpath, dirnames, filenames in os.walk(local):
        total += DIR_APPARENT_BYTES
        for name in filenames:
            try:
                total += os.lstat(os.path.join(_dirpath, name)).st_size
            except OSError:
                continue  # removed while walking
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(_dirpath, d))]
    return total


Writer = Callable[[str], None]

DF_HEADERS = {
    "source": "Filesystem",
    "fstype": "Type",
    "size": "{blocks}",
    "used": "Used",
    "avail": "Avail",
    "pcent": "Use%",
    "target": "Mounted on",
    "file": "File",
}
_LEFT_ALIGNED = {"source", "fstype", "target", "file"}


def df(argv: list[str], fs: SimFs, out: Writer, err: Writer) -> int:
    """GNU df for `-B1 --output=...`, `-P -k`, `-k` and `-B1` over the one file system."""
    block, fields, paths = 1024, ["source", "size", "used", "avail", "pcent", "target"], []
    posix = False
    args = iter(argv[1:])
    for arg in args:
        if arg in ("-B1", "--block-size=1"):
            block = 1
        elif arg in ("-B", "--block-size"):
            value = next(args, "")
            if value != "1":
                return _usage(err, "df", f"invalid block size: '{value}' (only 1 is simulated)")
            block = 1
        elif arg == "-k":
            block = 1024
        elif arg in ("-P", "--portability"):
            posix = True
        elif arg.startswith("--output="):
            fields = arg.split("=", 1)[1].split(",")
            unknown = [f for f in fields if f not in DF_HEADERS]
            if unknown:
                return _usage(err, "df", f"option --output: field '{unknown[0]}' unknown")
        elif arg.startswith("-") and arg != "-":
            return _usage(err, "df", f"invalid option -- '{arg.lstrip('-')[:1]}'")
        else:
            paths.append(arg)
    status, rows = 0, []
    for path in paths or ["/"]:
        if fs.kind(path) is None:
            err(f"df: {path}: No such file or directory\n")
            status = 1
            continue
        rows.append(_df_row(fs, fields, block, path))
    if not rows:
        return status
    blocks = "1B-blocks" if block == 1 else ("1024-blocks" if posix else "1K-blocks")
    header = [DF_HEADERS[f].format(blocks=blocks) for f in fields]
    if posix:
        header = [{"Avail": "Available", "Use%": "Capacity"}.get(h, h) for h in header]
    out(_table([header, *rows], [f in _LEFT_ALIGNED for f in fields]))
    return status


def _df_row(fs: SimFs, fields: list[str], block: int, path: str) -> list[str]:
    size, used = fs.disk.size_bytes, fs.used_bytes()
    avail = max(0, size - used)
    values = {
        "source": fs.disk.source,
        "fstype": fs.disk.fstype,
        "size": str(size // block),
        "used": str(used // block),
        "avail": str(avail // block),
        "pcent": f"{-(-used * 100 // size)}%",  # df rounds the percentage up
        "target": "/",
        "file": path,
    }
    return [values[f] for f in fields]


def _table(rows: list[list[str]], left: list[bool]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(left))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(w) if is_left else cell.rjust(w)
            for cell, w, is_left in zip(row, widths, left, strict=True)
        ]
        lines.append(" ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def du(argv: list[str], fs: SimFs, out: Writer, err: Writer) -> int:
    """GNU du for `-s` with `-b` (bytes), `-k` or `-B1`; directories are walked whole."""
    block, summarize, paths = 1024, False, []
    args = iter(argv[1:])
    for arg in args:
        if arg == "--":  # the end of options: everything after is a path
            paths.extend(args)
            break
        if arg in ("-B1", "--block-size=1", "--bytes"):
            block = 1
        elif arg in ("-s", "--summarize"):
            summarize = True
        elif arg.startswith("-") and len(arg) > 1 and not arg.startswith("--"):
            for flag in arg[1:]:
                if flag == "b":
                    block = 1
                elif flag == "k":
                    block = 1024
                elif flag == "s":
                    summarize = True
                else:
                    return _usage(err, "du", f"invalid option -- '{flag}'")
        elif arg.startswith("-") and arg != "-":
            return _usage(err, "du", f"unrecognized option '{arg}'")
        else:
            paths.append(arg)
    if not summarize:
        err("sim: du: only `du -s` is simulated\n")
        return 2
    status = 0
    for path in paths or ["."]:
        size = fs.apparent_size(path)
        if size is None:
            err(f"du: cannot access '{path}': No such file or directory\n")
            status = 1
            continue
        out(f"{-(-size // block)}\t{path}\n")
    return status


def _usage(err: Writer, tool: str, message: str) -> int:
    err(f"{tool}: {message}\nTry '{tool} --help' for more information.\n")
    return 1
