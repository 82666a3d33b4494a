"""Where a host keeps what outlives a container: the hub cache and vLLM's compile cache.

The hub cache (`models--org--name` folders, HF_HUB_CACHE's layout) is, in order:

1. the host's inventory `hf_cache_dir`,
2. the `ARBITER_HF_CACHE_DIR` setting (one directory for every host),
3. the SSH user's `~/.cache/huggingface/hub` — where every DGX Spark recipe keeps
   weights (NVIDIA dgx-spark-playbooks and vLLM's Docker docs both run
   `-v ~/.cache/huggingface:/root/.cache/huggingface`), so Arbiter finds what the
   operator's scripts already downloaded.

vLLM's compile cache (torch.compile and CUDA graph artefacts) lives in VLLM_CACHE_ROOT,
`~/.cache/vllm` by default (vllm/envs.py: `os.path.join(get_default_cache_root(),
"vllm")`), i.e. /root/.cache/vllm in a container running as root: mounting the SSH
user's `~/.cache/vllm` there keeps it across swaps, so a second load skips compiling.

docker needs absolute paths and expands no `~`, so the SSH user's home is asked once
(`printenv HOME`, the value sshd set from the passwd entry) and kept in `Host.home_dir`.
"""

from __future__ import annotations

import posixpath

from asgiref.sync import sync_to_async
from django.conf import settings

from arbiter.engine import ssh
from arbiter.errors import CommandFailed
from arbiter.models import Host

HUB_CACHE_UNDER_HOME = ".cache/huggingface/hub"
VLLM_CACHE_UNDER_HOME = ".cache/vllm"
CONTAINER_VLLM_CACHE = "/root/.cache/vllm"
HOME_ARGV = ["printenv", "HOME"]
HOME_TIMEOUT = 15.0


def hub_cache_dir(host: Host) -> str:
    """The host's hub cache ("" while the SSH user's home is not known yet)."""
    if host.hf_cache_dir:
        return host.hf_cache_dir
    if settings.ARBITER_HF_CACHE_DIR:
        return settings.ARBITER_HF_CACHE_DIR
    return posixpath.join(host.home_dir, HUB_CACHE_UNDER_HOME) if host.home_dir else ""


def hub_cache_source(host: Host) -> str:
    """Which rule chose the hub cache, for check details."""
    if host.hf_cache_dir:
        return "inventory hf_cache_dir"
    if settings.ARBITER_HF_CACHE_DIR:
        return "ARBITER_HF_CACHE_DIR"
    return f"~{host.ssh_user}/{HUB_CACHE_UNDER_HOME}"


def vllm_cache_dir(host: Host) -> str:
    """The SSH user's ~/.cache/vllm ("" while the home is not known yet)."""
    return posixpath.join(host.home_dir, VLLM_CACHE_UNDER_HOME) if host.home_dir else ""


def _parse_home(stdout: str) -> str:
    home = stdout.strip()
    if not home.startswith("/") or "\n" in home or posixpath.normpath(home) != home:
        return ""
    return home


async def learn_home_dir(target: ssh.SshTarget) -> str:
    """Ask the host for the SSH user's home and keep it in `Host.home_dir`."""
    result = await ssh.run(target, HOME_ARGV, timeout=HOME_TIMEOUT, check=False)
    home = _parse_home(result.stdout) if result.exit_status == 0 else ""
    if not home:
        raise CommandFailed(
            target.name,
            list(HOME_ARGV),
            result.exit_status,
            result.stderr.strip() or f"no absolute HOME in {result.stdout.strip()!r}",
        )
    await sync_to_async(_save_home)(target.name, home)
    return home


def _save_home(host_name: str, home: str) -> None:
    Host.objects.filter(name=host_name).exclude(home_dir=home).update(home_dir=home)


def _home_and_target(host_name: str) -> tuple[str, ssh.SshTarget] | None:
    host = Host.objects.filter(name=host_name).first()
    if host is None:
        return None
    target = ssh.SshTarget.from_host(host, connect_timeout=settings.ARBITER_SSH_CONNECT_TIMEOUT)
    return host.home_dir, target


async def ensure_home_dir(host_name: str) -> str:
    """The known home of the host's SSH user, asked over SSH the first time.

    Raises SshError (unreachable, command failed) when it cannot be learned.
    """
    known = await sync_to_async(_home_and_target)(host_name)
    if known is None:
        return ""
    home, target = known
    return home or await learn_home_dir(target)


async def host_hub_cache(target: ssh.SshTarget) -> str:
    """The hub cache of the host `target` reaches, learning the home when it is needed."""
    host = await sync_to_async(Host.objects.filter(name=target.name).first)()
    if host is None:
        return settings.ARBITER_HF_CACHE_DIR or ""
    cache = hub_cache_dir(host)
    if cache:
        return cache
    # Neither the host nor the setting names one: the SSH user's own cache.
    return posixpath.join(await learn_home_dir(target), HUB_CACHE_UNDER_HOME)
