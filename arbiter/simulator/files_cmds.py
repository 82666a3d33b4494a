"""`realpath` and `rm` on a simulated host, confined to its simulated file system.

`realpath -e` follows symlinks the way the host would (`SimFs.resolve`): an absolute
link target is a path of the *simulated* host, so a link to `/etc` resolves to the
simulated `/etc`, and what Arbiter sees is the path a real host would print. `rm -rf`
only ever removes below the host's fs directory.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from pathlib import Path

from arbiter.simulator.fs import HOME, SimFs
from arbiter.simulator.shell import Io


def _split_options(argv: list[str], tool: str, io: Io, allowed: str) -> tuple[set[str], list[str]]:
    """Short flags (`-rf`) until `--` or the first operand; raise ValueError on unknown."""
    flags: set[str] = set()
    operands: list[str] = []
    args = iter(argv[1:])
    for arg in args:
        if arg == "--":
            operands.extend(args)
            break
        if arg.startswith("--"):
            long_names = {
                "--canonicalize-existing": "e",
                "--recursive": "r",
                "--force": "f",
            }
            flag = long_names.get(arg)
            if flag is None or flag not in allowed:
                io.err(f"{tool}: unrecognized option '{arg}'\nTry '{tool} --help'.\n")
                raise ValueError(arg)
            flags.add(flag)
        elif arg.startswith("-") and arg != "-":
            for flag in arg[1:]:
                if flag not in allowed:
                    io.err(f"{tool}: invalid option -- '{flag}'\nTry '{tool} --help'.\n")
                    raise ValueError(arg)
                flags.add(flag.lower() if flag == "R" else flag)
        else:
            operands.append(arg)
    return flags, operands


def _simulated_path(fs: SimFs, local_path: object) -> str:
    relative = str(local_path)[len(str(fs.root)) :].lstrip("/")
    return "/" + relative


async def realpath(argv: list[str], io: Io, fs: SimFs) -> int:
    """GNU `realpath -e [--] PATH...`: every component must exist."""
    try:
        flags, paths = _split_options(argv, "realpath", io, "e")
    except ValueError:
        return 1
    if "e" not in flags:
        io.err("sim: realpath: only `realpath -e PATH` is simulated\n")
        return 2
    if not paths:
        io.err("realpath: missing operand\nTry 'realpath --help' for more information.\n")
        return 1
    status = 0
    for path in paths:
        local = fs.resolve(path)
        if local is None:
            io.err(f"realpath: {path}: Too many levels of symbolic links\n")
            status = 1
        elif not local.exists():
            io.err(f"realpath: {path}: No such file or directory\n")
            status = 1
        else:
            io.out(_simulated_path(fs, local) + "\n")
    return status


def _below_root(fs: SimFs, local: Path) -> bool:
    parent, root = local.parent.resolve(), fs.root.resolve()
    return parent == root or root in parent.parents


async def rm(argv: list[str], io: Io, fs: SimFs) -> int:
    """GNU `rm [-r] [-f] [--] PATH...`; the last component is removed, never followed."""
    try:
        flags, paths = _split_options(argv, "rm", io, "rfR")
    except ValueError:
        return 1
    if not paths:
        if "f" in flags:
            return 0
        io.err("rm: missing operand\nTry 'rm --help' for more information.\n")
        return 1
    status = 0
    for path in paths:
        if posixpath.basename(path.rstrip("/")) in (".", ".."):
            io.err(f"rm: refusing to remove '.' or '..' directory: skipping '{path}'\n")
            status = 1
            continue
        # `..` is applied lexically (it can only move towards the root); an empty result
        # is `/` however it was spelt (`//`, `/models/../../x/..`).
        parts: list[str] = []
        for part in posixpath.join(HOME, path).split("/"):
            if part == "..":
                parts = parts[:-1]
            elif part not in ("", "."):
                parts.append(part)
        if not parts:
            io.err(f"rm: it is dangerous to operate recursively on '{path}' (same as '/')\n")
            status = 1
            continue
        parent = fs.resolve("/" + "/".join(parts[:-1]))
        local = None if parent is None else parent / parts[-1]
        if local is not None and not _below_root(fs, local):
            local = None  # belt and braces: never touch anything outside the simulated fs
        if local is None or not (local.is_symlink() or local.exists()):
            if "f" not in flags:
                io.err(f"rm: cannot remove '{path}': No such file or directory\n")
                status = 1
            continue
        if local.is_dir() and not local.is_symlink():
            if "r" not in flags:
                io.err(f"rm: cannot remove '{path}': Is a directory\n")
                status = 1
                continue
            denied = _root_owned_entry(fs, path, local)
            if denied:
                # Entries of a directory the user does not own cannot be unlinked (a
                # root container's files): GNU rm names the first and exits 1. The
                # simulator then leaves the whole tree in place.
                io.err(f"rm: cannot remove '{denied}': Permission denied\n")
                status = 1
                continue
            shutil.rmtree(local)
            fs.forget_below("/" + "/".join(parts))
        else:
            local.unlink()
    return status


def _root_owned_entry(fs: SimFs, path: str, local: Path) -> str:
    """The first entry rm fails on: rm empties the deepest directories first (fts,
    post-order), and an entry of a directory the user cannot write stays ("" if none)."""
    for dirpath, dirnames, filenames in sorted(os.walk(local, topdown=False), reverse=True):
        folder = _simulated_path(fs, dirpath)
        if fs.owner(folder) != fs.user:
            entries = sorted(dirnames + filenames)
            if entries:
                inside = str(Path(dirpath, entries[0]).relative_to(local))
                return path.rstrip("/") + "/" + inside
    return ""
