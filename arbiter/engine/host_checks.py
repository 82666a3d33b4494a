"""Host preconditions: what a GPU host must offer before Arbiter can swap models on it.

Each check says ok / detail / fix, the fix being what an operator types on the host.
`manage.py check_host NAME` and `GET /api/hosts/{name}/checks` run them all; swap
pre-flight runs the ones a swap needs (`swap_checks`). Every command is read-only.

- ssh: the login works (`printenv HOME`, which also records the user's home).
- docker: the SSH user can talk to dockerd without sudo. Outside the `docker` group
  the CLI says "permission denied while trying to connect to the Docker daemon
  socket" (moby client/request.go); the fix is Docker's post-install step
  (docs.docker.com/engine/install/linux-postinstall) `sudo usermod -aG docker USER`.
- nvidia_runtime: `nvidia` among `docker info --format '{{json .Runtimes}}'` (moby
  api/types/system Runtime); NVIDIA Container Toolkit's install guide configures it
  with `sudo nvidia-ctk runtime configure --runtime=docker`.
- nvidia_smi: the driver answers; otherwise nvidia-smi's own message and status.
- hf: the hub CLI for downloads: `hf` on the non-interactive PATH, or the same CLI as
  `python3 -m huggingface_hub.cli.hf` (what `arbiter.engine.disk.hub_cli` falls back to).
- hub_token: with ARBITER_HF_TOKEN set, `HF_TOKEN` survives sshd's AcceptEnv filter.
  The check sends a random probe value under that name, never the token, and compares
  what `printenv HF_TOKEN` prints: the token is in no argv, output or log.
- hub_cache: exists, writable by the SSH user, nothing in it owned by anyone else
  (containers run as root and leave root-owned files in a bind-mounted cache; the
  user's next `hf download` then fails with PermissionError).
- disk: free space where the weights go, against the model's size when one is given.
- sessions: one fresh connection holds `max_ssh_sessions` + 1 sessions at once, i.e.
  the host's MaxSessions leaves Arbiter its budget and one to spare. Measured by opening
  them (`ssh.probe_sessions`), because `sshd -T` needs root.
"""

from __future__ import annotations

import json
import posixpath
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypedDict

from asgiref.sync import sync_to_async
from django.conf import settings

from arbiter.engine import host_paths, ssh
from arbiter.errors import ArbiterError, HostKeyRejected, SshAuthFailed, SshError
from arbiter.models import Host
from catalog.models import CatalogModel

TIMEOUT = 20.0
HF_MODULE_ARGV = ["python3", "-m", "huggingface_hub.cli.hf"]
ACCEPT_ENV_LINE = "AcceptEnv HF_TOKEN"
RELOAD_SSHD = "sudo systemctl reload ssh"  # Debian/Ubuntu's unit is `ssh`


class HostCheckOut(TypedDict):
    name: str
    ok: bool
    detail: str
    fix: str


class HostReportOut(TypedDict):
    host: str
    ok: bool
    checks: list[HostCheckOut]


@dataclass(frozen=True)
class HostCheck:
    """One precondition and what the host showed; `fix` is empty when nothing is to do."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def as_dict(self) -> HostCheckOut:
        return HostCheckOut(name=self.name, ok=self.ok, detail=self.detail, fix=self.fix)


@dataclass
class HostReport:
    """Every check of one host."""

    host: str
    checks: list[HostCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_dict(self) -> HostReportOut:
        return HostReportOut(
            host=self.host, ok=self.ok, checks=[check.as_dict() for check in self.checks]
        )


@dataclass(frozen=True)
class HostFacts:
    """What the checks need from the database, read once (plain values)."""

    target: ssh.SshTarget
    user: str
    hub_cache: str  # "" until the home is known
    hub_cache_source: str
    model_key: str = ""
    model_local: bool = False
    model_size_mib: int = 0
    model_folder: str = ""  # where the model's files are / will be ("" unknown)


def _facts(host_name: str, model_key: str | None) -> HostFacts:
    host = Host.objects.by_name(host_name)
    model = CatalogModel.objects.by_key(model_key) if model_key else None
    cache = host_paths.hub_cache_dir(host)
    folder = ""
    if model is not None:
        folder = model.local_path or (
            posixpath.join(cache, "models--" + model.hub_repo.replace("/", "--")) if cache else ""
        )
    return HostFacts(
        target=ssh.SshTarget.from_host(host, connect_timeout=settings.ARBITER_SSH_CONNECT_TIMEOUT),
        user=host.ssh_user,
        hub_cache=cache,
        hub_cache_source=host_paths.hub_cache_source(host),
        model_key=model.key if model else "",
        model_local=bool(model and model.local_path),
        model_size_mib=(model.estimated_vram_mib or 0) if model else 0,
        model_folder=folder,
    )


# -- the checks ------------------------------------------------------------------------
def _tool_message(result: ssh.CommandResult) -> str:
    # nvidia-smi prints its driver errors on stdout; most tools use stderr.
    text = (result.stderr.strip() or result.stdout.strip()).splitlines()
    message = " ".join(text[:3]) if text else ""
    return (
        f"{message} (exit status {result.exit_status})"
        if message
        else (f"exit status {result.exit_status}")
    )


async def ssh_check(facts: HostFacts) -> tuple[HostCheck, str]:
    """The login, and the SSH user's home (kept in Host.home_dir)."""
    t = facts.target
    try:
        home = await host_paths.learn_home_dir(t)
    except SshAuthFailed as error:
        fix = (
            f"add Arbiter's public key to ~{t.user}/.ssh/authorized_keys on the host, e.g. "
            f"`ssh-copy-id -i {t.key_path or 'KEY'}.pub -p {t.port} {t.user}@{t.address}`"
        )
        return HostCheck("ssh", False, error.message, fix), ""
    except HostKeyRejected as error:
        return HostCheck("ssh", False, error.message, f"manage.py trust_host {t.name}"), ""
    except SshError as error:
        fix = (
            f"check address/ssh_port ({t.address}:{t.port}) and that sshd runs "
            "(`sudo systemctl status ssh`)"
        )
        return HostCheck("ssh", False, error.message, fix), ""
    detail = f"logged in as {t.user} at {t.address}:{t.port}; home {home}"
    return HostCheck("ssh", True, detail), home


async def docker_checks(facts: HostFacts) -> list[HostCheck]:
    """docker without sudo, then NVIDIA's runtime, from one `docker info`."""
    argv = ["docker", "info", "--format={{json .Runtimes}}"]
    result = await ssh.run(facts.target, argv, timeout=TIMEOUT, check=False)
    if result.exit_status != 0:
        message = _tool_message(result)
        if "permission denied" in result.stderr:
            fix = (
                f"`sudo usermod -aG docker {facts.user}` (Docker's post-install step); the "
                "group applies to new logins, so restart Arbiter (or its SSH connection) after"
            )
        elif result.exit_status == 127:
            fix = "install Docker Engine (docs.docker.com/engine/install)"
        else:
            fix = "`sudo systemctl status docker` on the host"
        return [
            HostCheck("docker", False, f"{facts.user} cannot use docker: {message}", fix),
            HostCheck("nvidia_runtime", False, "not checked: docker is not usable"),
        ]
    docker = HostCheck("docker", True, f"{facts.user} runs docker without sudo")
    try:
        runtimes = json.loads(result.stdout.strip() or "{}")
    except ValueError:
        runtimes = None
    if not isinstance(runtimes, dict):
        return [docker, HostCheck("nvidia_runtime", False, f"unreadable: {result.stdout!r}")]
    names = ", ".join(sorted(runtimes)) or "none"
    if "nvidia" in runtimes:
        return [docker, HostCheck("nvidia_runtime", True, f"docker runtimes: {names}")]
    fix = (
        "install the NVIDIA Container Toolkit, then `sudo nvidia-ctk runtime configure "
        "--runtime=docker && sudo systemctl restart docker`"
    )
    return [docker, HostCheck("nvidia_runtime", False, f"no nvidia runtime ({names})", fix)]


async def nvidia_smi_check(facts: HostFacts) -> HostCheck:
    argv = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
    result = await ssh.run(facts.target, argv, timeout=TIMEOUT, check=False)
    if result.exit_status == 0 and result.stdout.strip():
        gpus = [line.strip() for line in result.stdout.strip().splitlines()]
        return HostCheck("nvidia_smi", True, f"{len(gpus)} GPU(s): {'; '.join(gpus)}")
    message = _tool_message(result)
    if "mismatch" in message:
        fix = "the driver was updated under a running kernel module: reboot the host"
    elif result.exit_status == 127:
        fix = "install the NVIDIA driver (nvidia-smi is not on the PATH)"
    else:
        fix = "check the NVIDIA driver: run `nvidia-smi` on the host"
    return HostCheck("nvidia_smi", False, f"nvidia-smi failed: {message}", fix)


async def hf_check(facts: HostFacts) -> HostCheck:
    found = await ssh.run(facts.target, ["command", "-v", "hf"], timeout=TIMEOUT, check=False)
    if found.exit_status == 0:
        return HostCheck("hf", True, f"hf at {found.stdout.strip() or 'PATH'}")
    module = await ssh.run(facts.target, [*HF_MODULE_ARGV, "version"], timeout=TIMEOUT, check=False)
    if module.exit_status == 0:
        return HostCheck(
            "hf",
            True,
            "hf is not on the non-interactive PATH; downloads use `python3 -m "
            "huggingface_hub.cli.hf`",
        )
    fix = (
        f"install the Hugging Face CLI for {facts.user} (`pipx install huggingface_hub` or "
        "`curl -LsSf https://hf.co/cli/install.sh | bash`) and make it reachable without a "
        f"login shell: `sudo ln -s /home/{facts.user}/.local/bin/hf /usr/local/bin/hf`"
    )
    detail = f"no `hf` on the PATH of a non-interactive SSH command, and {_tool_message(module)}"
    return HostCheck("hf", False, detail, fix)


async def hub_token_check(facts: HostFacts) -> HostCheck:
    if not settings.ARBITER_HF_TOKEN:
        return HostCheck("hub_token", True, "no hub token configured (ARBITER_HF_TOKEN)")
    # A random value under the same name: sshd filters by name, and the token itself
    # never travels for a check.
    probe = f"arbiter-check-{secrets.token_hex(8)}"
    result = await ssh.run(
        facts.target,
        ["printenv", "HF_TOKEN"],
        timeout=TIMEOUT,
        env={"HF_TOKEN": probe},
        check=False,
    )
    if result.exit_status == 0 and result.stdout.strip() == probe:
        return HostCheck("hub_token", True, "HF_TOKEN arrives through SSH (AcceptEnv)")
    fix = (
        f"add the line `{ACCEPT_ENV_LINE}` to /etc/ssh/sshd_config on {facts.target.name}, "
        f"then `{RELOAD_SSHD}`"
    )
    detail = (
        "sshd drops HF_TOKEN from the SSH environment (sshd_config has no AcceptEnv for it): "
        "gated models cannot be downloaded or served"
    )
    return HostCheck("hub_token", False, detail, fix)


async def hub_cache_check(facts: HostFacts, must_exist: bool = True) -> HostCheck:
    cache, user, t = facts.hub_cache, facts.user, facts.target
    if not cache:
        return HostCheck("hub_cache", False, "not checked: the SSH user's home is unknown")
    where = f"{cache} ({facts.hub_cache_source})" if facts.hub_cache_source else cache
    exists = await ssh.run(t, ["test", "-d", cache], timeout=TIMEOUT, check=False)
    if exists.exit_status != 0 and not must_exist:
        return HostCheck("hub_cache", True, f"{where} does not exist yet: hf creates it")
    if exists.exit_status != 0:
        # Created by docker's bind mount it would belong to root: make it as the user.
        fix = f"as {user} (not root): `mkdir -p {cache}`"
        return HostCheck("hub_cache", False, f"{where} does not exist", fix)
    chown = f"`sudo chown -R {user}: {cache}`"
    writable = await ssh.run(t, ["test", "-w", cache], timeout=TIMEOUT, check=False)
    if writable.exit_status != 0:
        return HostCheck("hub_cache", False, f"{where} is not writable by {user}", chown)
    argv = ["find", cache, "!", "-user", user, "-print", "-quit"]
    found = await ssh.run(t, argv, timeout=60.0, check=False)
    foreign = found.stdout.strip()
    if foreign:
        detail = (
            f"{where} has parts not owned by {user}, e.g. {foreign} (written by a container "
            "running as root): downloads into it fail"
        )
        return HostCheck("hub_cache", False, detail, chown)
    if found.exit_status != 0:
        return HostCheck(
            "hub_cache", False, f"cannot read all of {where}: {_tool_message(found)}", chown
        )
    return HostCheck("hub_cache", True, f"{where} exists and is {user}'s throughout")


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


async def disk_check(facts: HostFacts) -> HostCheck:
    t = facts.target
    where = facts.hub_cache if not facts.model_local else posixpath.dirname(facts.model_folder)
    where = where or "/"
    argv = ["df", "-B1", "--output=avail", where]
    result = await ssh.run(t, argv, timeout=TIMEOUT, check=False)
    lines = result.stdout.split()
    if result.exit_status != 0 or len(lines) < 2 or not lines[-1].isdigit():
        return HostCheck(
            "disk", False, f"cannot read free space at {where}: {_tool_message(result)}"
        )
    free = int(lines[-1])
    if not facts.model_key:
        return HostCheck("disk", True, f"{_human(free)} free at {where}")
    if facts.model_local:
        return HostCheck("disk", True, f"{facts.model_key} is local: nothing to download")
    present = await ssh.run(t, ["test", "-d", facts.model_folder], timeout=TIMEOUT, check=False)
    if facts.model_folder and present.exit_status == 0:
        return HostCheck("disk", True, f"{facts.model_key} is already in the hub cache")
    if not facts.model_size_mib:
        return HostCheck(
            "disk", True, f"{_human(free)} free at {where}; {facts.model_key} has no size estimate"
        )
    need = facts.model_size_mib * 1024 * 1024
    detail = (
        f"{_human(free)} free at {where}; {facts.model_key} needs up to {_human(need)} "
        "(its VRAM estimate, an upper bound for the weights)"
    )
    if free < need:
        return HostCheck("disk", False, detail, f"free {_human(need - free)} on {where}")
    return HostCheck("disk", True, detail)


async def sessions_check(facts: HostFacts) -> HostCheck:
    budget = facts.target.max_ssh_sessions
    accepted, refused = await ssh.probe_sessions(facts.target, budget + 1)
    if accepted > budget:
        return HostCheck(
            "sessions",
            True,
            f"one connection holds {accepted} sessions at once; Arbiter uses at most {budget}",
        )
    detail = (
        f"the host refused session {accepted + 1} on one connection ({refused or 'refused'}); "
        f"Arbiter's max_ssh_sessions is {budget} and needs one to spare"
    )
    fix = (
        f"raise `MaxSessions` in /etc/ssh/sshd_config to {budget + 2} or more "
        f"(`{RELOAD_SSHD}`), or set max_ssh_sessions: {max(1, accepted - 1)} for "
        f"{facts.target.name} in the inventory"
    )
    return HostCheck("sessions", accepted >= budget, detail, fix)


# -- running them ----------------------------------------------------------------------
async def _guarded(name: str, check: Callable[[], Awaitable[HostCheck]]) -> HostCheck:
    try:
        return await check()
    except ArbiterError as error:  # lost connection, timeout ...
        return HostCheck(name, False, f"{error.error_type}: {error.message}")


async def check_host(host_name: str, model_key: str | None = None) -> HostReport:
    """Every precondition of `host_name` (and of downloading `model_key` there)."""
    facts = await sync_to_async(_facts)(host_name, model_key)
    report = HostReport(host_name)
    login, home = await ssh_check(facts)
    report.checks.append(login)
    if not login.ok:
        names = ["docker", "nvidia_runtime", "nvidia_smi", "hf", "hub_token", "hub_cache"]
        names += ["disk", "sessions"]
        report.checks += [HostCheck(n, False, "not checked: no SSH login") for n in names]
        return report
    if home and not facts.hub_cache:  # the home was just learned: the default cache
        facts = await sync_to_async(_facts)(host_name, model_key)
    try:
        report.checks += await docker_checks(facts)
    except ArbiterError as error:
        report.checks.append(HostCheck("docker", False, f"{error.error_type}: {error.message}"))
    checks: list[tuple[str, Callable[[HostFacts], Awaitable[HostCheck]]]] = [
        ("nvidia_smi", nvidia_smi_check),
        ("hf", hf_check),
        ("hub_token", hub_token_check),
        ("hub_cache", hub_cache_check),
        ("disk", disk_check),
        ("sessions", sessions_check),
    ]
    for name, check in checks:
        report.checks.append(await _guarded(name, partial(check, facts)))
    return report


async def swap_checks(
    target: ssh.SshTarget, *, local: bool, host_path: str, hub_cache: str, user: str
) -> list[HostCheck]:
    """What a swap of a hub model needs of the host (local models need none of these):
    the token arriving (when one is configured: the container gets it from the SSH
    session), and, when the weights must be downloaded first, `hf` and a cache the
    SSH user can write."""
    if local:
        return []
    facts = HostFacts(target, user, hub_cache, "", model_folder=host_path)
    checks = []
    if settings.ARBITER_HF_TOKEN:
        checks.append(await _guarded("hub_token", partial(hub_token_check, facts)))
    present = await ssh.run(target, ["test", "-d", host_path], timeout=TIMEOUT, check=False)
    if present.exit_status != 0:
        checks.append(await _guarded("hf", partial(hf_check, facts)))
        checks.append(await _guarded("hub_cache", partial(hub_cache_check, facts, False)))
    return checks
