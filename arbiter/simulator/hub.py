"""`hf download` on a simulated host: progress lines, then a Hugging Face cache folder.

The files are sparse (a "1.2 GB" safetensors costs nothing) and land where the real
CLI puts them: `<cache-dir>/models--org--name/snapshots/<commit>/` plus `refs/<rev>`.
Unlike the real CLI (whose tqdm bars go to stderr), the progress is printed on stdout
as whole lines, so a test sees them arrive one by one. Repos whose name contains
`missing` do not exist; repos containing `gated` need HF_TOKEN in the environment.
"""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
import re

from arbiter.simulator.fs import HOME, SimFs
from arbiter.simulator.shell import Io

STEP_SECONDS = 0.15  # four steps: a download takes ~0.6 s
DEFAULT_CACHE = f"{HOME}/.cache/huggingface/hub"
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
GIB = 1024**3


def weights_bytes(repo: str) -> int:
    """bf16 weights for the parameter count in the name (`Qwen3-0.6B`), else 1 GiB."""
    match = re.search(r"(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", repo.split("/")[1])
    return int(float(match.group(1)) * 2e9) if match else GIB


def _files(repo: str) -> list[tuple[str, int, bytes | None]]:
    config = b'{"architectures": ["Qwen3ForCausalLM"], "torch_dtype": "bfloat16"}\n'
    return [
        ("config.json", 0, config),
        ("generation_config.json", 0, b'{"do_sample": true}\n'),
        ("tokenizer.json", 11_422_654, None),
        ("model.safetensors", weights_bytes(repo), None),
    ]


def _usage(io: Io, message: str) -> int:
    io.err(f"Usage: hf download [OPTIONS] REPO_ID [FILENAMES]...\nError: {message}\n")
    return 2


def _bar(done: int, total: int) -> str:
    pct = done * 100 // total
    filled = "█" * (done * 10 // total)
    return f"Fetching {total} files: {pct:3d}%|{filled:<10}| {done}/{total} [00:0{done}<00:00]"


async def hf(argv: list[str], io: Io, fs: SimFs) -> int:
    """`hf download REPO [--revision R] [--cache-dir DIR]` (also `--opt=value`)."""
    if argv[1:2] != ["download"]:
        io.err("sim: hf: only `hf download REPO [--revision R] [--cache-dir DIR]` is simulated\n")
        return 2
    options = {"--revision": "main", "--cache-dir": ""}
    repos: list[str] = []
    args = iter(argv[2:])
    for arg in args:
        name, has_value, value = arg.partition("=")
        if name in options:
            if not has_value:
                value = next(args, "")
                if not value:
                    return _usage(io, f"Option '{name}' requires an argument.")
            options[name] = value
        elif arg.startswith("-"):
            return _usage(io, f"No such option: {name}")
        else:
            repos.append(arg)
    if len(repos) != 1:
        return _usage(io, "Missing argument 'REPO_ID'." if not repos else "Got unexpected extra")
    repo, revision = repos[0], options["--revision"]
    cache_dir = options["--cache-dir"] or io.env.get("HF_HUB_CACHE") or DEFAULT_CACHE
    if not REPO_RE.match(repo):
        io.err(
            "huggingface_hub.errors.HFValidationError: Repo id must be in the form "
            f"'repo_name' or 'namespace/repo_name': '{repo}'.\n"
        )
        return 1
    if "missing" in repo:
        io.err(
            f"huggingface_hub.errors.RepositoryNotFoundError: 404 Client Error. "
            f"Repository Not Found for url: https://huggingface.co/api/models/{repo}/revision/"
            f"{revision}.\nPlease make sure you specified the correct `repo_id` and "
            "`repo_type`.\nIf you are trying to access a private or gated repo, make sure you "
            "are authenticated.\n"
        )
        return 1
    if "gated" in repo and not io.env.get("HF_TOKEN"):
        io.err(
            f"huggingface_hub.errors.GatedRepoError: 401 Client Error. Cannot access gated "
            f"repo for url https://huggingface.co/api/models/{repo}/revision/{revision}.\n"
            f"Access to model {repo} is restricted. You must have access to it and be "
            "authenticated to access it. Please log in.\n"
        )
        return 1
    # A made-up but stable commit id for branch and tag names.
    fake = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()  # noqa: S324
    commit = revision if SHA_RE.match(revision) else fake
    folder = posixpath.join(cache_dir, "models--" + repo.replace("/", "--"))
    snapshot = posixpath.join(folder, "snapshots", commit)
    files = _files(repo)
    io.out(_bar(0, len(files)) + "\n")
    await io.drain()
    for done, (name, size, content) in enumerate(files, start=1):
        await asyncio.sleep(STEP_SECONDS)
        if io.closed():  # the client went away: stop like a killed download would
            return 130
        fs.add_file(posixpath.join(snapshot, name), size=size, content=content)
        io.out(_bar(done, len(files)) + "\n")
        await io.drain()
    if not SHA_RE.match(revision):
        fs.add_file(posixpath.join(folder, "refs", revision), content=commit.encode())
    io.out(snapshot + "\n")
    return 0
