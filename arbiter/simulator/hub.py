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

from arbiter.simulator.docker_opts import RUN_FLAGS
from arbiter.simulator.fs import HOME, SimFs
from arbiter.simulator.pflags import FlagError, parse
from arbiter.simulator.shell import Io
from arbiter.simulator.timing import SimTiming

HUB_VERSION = "1.2.3"  # the simulated huggingface_hub release
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


async def hf(argv: list[str], io: Io, fs: SimFs, timing: SimTiming | None = None) -> int:
    """`hf download REPO [--revision R] [--cache-dir DIR]` (also `--opt=value`)."""
    if argv[1:] == ["version"]:  # huggingface_hub cli/system.py version(), human output
        io.out(f"✓ hf version\n  version: {HUB_VERSION}\n")
        return 0
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
    denied = _unwritable(fs, cache_dir, repo)
    if denied:
        # What huggingface_hub raises writing its lock file or blobs into a folder that
        # a root container left behind (the CLI prints the error and exits 1).
        io.err(f"PermissionError: [Errno 13] Permission denied: '{denied}'\n")
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
        # Quick by default; size / bandwidth × the cluster's time scale when it has one.
        await asyncio.sleep((timing or SimTiming()).download_seconds(size, STEP_SECONDS))
        if io.closed():  # the client went away: stop like a killed download would
            return 130
        fs.add_file(posixpath.join(snapshot, name), size=size, content=content)
        io.out(_bar(done, len(files)) + "\n")
        await io.drain()
    if not SHA_RE.match(revision):
        fs.add_file(posixpath.join(folder, "refs", revision), content=commit.encode())
    io.out(snapshot + "\n")
    return 0


def _unwritable(fs: SimFs, cache_dir: str, repo: str) -> str:
    """The first folder of the download the user cannot write ("" when all is fine)."""
    folder = posixpath.join(cache_dir, "models--" + repo.replace("/", "--"))
    locks = posixpath.join(cache_dir, ".locks", "models--" + repo.replace("/", "--"))
    for path in (cache_dir, posixpath.join(cache_dir, ".locks"), locks, folder):
        if fs.kind(path) == "dir" and not fs.writable(path):
            return path
        if fs.kind(path) is None:
            # Created by the download, under the deepest existing parent.
            parent = posixpath.dirname(path)
            while fs.kind(parent) is None and parent != "/":
                parent = posixpath.dirname(parent)
            if not fs.writable(parent):
                return path
            break
    return ""


# `python3 -m huggingface_hub.cli.hf ...` runs the same CLI as `hf` (huggingface_hub
# setup.py console_scripts: hf=huggingface_hub.cli.hf:main; cli/hf.py has a __main__).
HUB_CLI_MODULE = "huggingface_hub.cli.hf"


async def python3(
    argv: list[str], io: Io, fs: SimFs, hub_installed: bool, timing: SimTiming | None = None
) -> int:
    """`python3 -m huggingface_hub.cli.hf ARGS`; other uses of python3 are not simulated."""
    if argv[1:2] != ["-m"] or len(argv) < 3:
        io.err("sim: python3: only `python3 -m huggingface_hub.cli.hf ...` is simulated\n")
        return 2
    module = argv[2]
    if not hub_installed and module.split(".")[0] == "huggingface_hub":
        io.err("/usr/bin/python3: No module named huggingface_hub\n")  # CPython runpy
        return 1
    if module != HUB_CLI_MODULE:
        io.err(f"/usr/bin/python3: No module named {module}\n")
        return 1
    return await hf(["hf", *argv[3:]], io, fs, timing)


def container_download(fs: SimFs, run_args: list[str]) -> str:
    """What vLLM in a just-started container writes into a bind-mounted hub cache.

    The container runs as root: the model's snapshot lands in the host folder mounted at
    /root/.cache/huggingface[/hub] (HF_HOME's default inside the image), owned by root,
    unless it is there already (vLLM reuses cached files). Returns the snapshot path, or
    "" when nothing was written (a local model, no cache mount, already cached).
    """
    try:
        parsed = parse(run_args, RUN_FLAGS, interspersed=False)
    except FlagError:
        return ""
    binds = []
    for spec in parsed.all("volume"):
        parts = spec.split(":")
        if len(parts) >= 2 and parts[0].startswith("/"):
            binds.append((parts[0], parts[1].rstrip("/")))
    model = revision = ""
    positional = []
    app_args = iter(parsed.args[1:])  # after the image
    for arg in app_args:
        name, eq, value = arg.partition("=")
        if name == "--model":
            model = value if eq else next(app_args, "")
        elif name == "--revision":
            revision = value if eq else next(app_args, "")
        elif not arg.startswith("-"):
            positional.append(arg)
    if not model:
        model = next((a for a in positional if REPO_RE.match(a)), "")
    if not model or model.startswith("/"):
        return ""
    cache = ""
    for source, target in binds:
        inner = {
            "/root/.cache/huggingface/hub": "",
            "/root/.cache/huggingface": "hub",
            "/root/.cache": "huggingface/hub",
        }.get(target)
        if inner is not None:
            cache = posixpath.join(source, inner) if inner else source
    if not cache:
        return ""
    revision = revision or "main"
    fake = hashlib.sha1(f"{model}@{revision}".encode()).hexdigest()  # noqa: S324
    commit = revision if SHA_RE.match(revision) else fake
    folder = posixpath.join(cache, "models--" + model.replace("/", "--"))
    snapshot = posixpath.join(folder, "snapshots", commit)
    if fs.kind(snapshot) == "dir":
        return ""
    fs.mkdir(cache, owner="root")  # a missing bind source: dockerd creates it, as root
    for name, size, content in _files(model):
        fs.add_file(posixpath.join(snapshot, name), size=size, content=content, owner="root")
    fs.add_file(
        posixpath.join(cache, ".locks", "models--" + model.replace("/", "--"), "x.lock"),
        owner="root",
    )
    if not SHA_RE.match(revision):
        fs.add_file(posixpath.join(folder, "refs", revision), content=commit.encode(), owner="root")
    return snapshot
