"""Who holds a service's slot on a host, and which of those containers a swap may stop.

A swap replaces what serves the host's vLLM service. It stops and removes only:

- **owned** containers: labelled `arbiter.managed=true` (every `docker run` Arbiter sends
  carries it, see `launch.ownership_labels`) and holding the slot — the catalog's
  container name, the service port published, or host networking;
- **adopted** containers: named in the service's `adopt_containers` in the inventory
  (the `vllm_node` a Spark launcher script started), whatever their labels.

Adopted containers are removed after the stop, like Arbiter's own: a stopped container
with `--restart always` is started again whenever the Docker daemon restarts ("If it's
manually stopped, it's restarted only when Docker daemon restarts",
docs.docker.com/engine/containers/start-containers-automatically/) and would take the
port back from Arbiter's model after a reboot; removing also frees its name. The script
that created it can create it again.

Anything else that holds the slot is **foreign**: it publishes the service port, has
the container name the launch needs, or runs with `--network host` while the port
answers. Pre-flight fails naming it and how to adopt it; it is never stopped or removed.

Host networking hides the port: `docker ps` shows no `Ports` for such a container
(docker/cli formatter.DisplayablePorts lists published ports only), so the only sign is
the port answering. That is a TCP connect to the service's base URL, not an HTTP
request: what blocks Arbiter's launch is a process listening on the port, whatever
it speaks and however healthy it is (a foreign Ollama answers 404 to vLLM's health
path, a crashed vLLM engine answers 503; both still hold the port). A vLLM that is
still loading binds its socket early but listens only once the engine is up
(vllm/entrypoints/openai/api_server.py, `create_server_socket` before the engine is
built), so it is not seen here; its launch then fails with docker's port error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from arbiter.engine.swaps.docker_argv import ContainerInfo

PORT_PROBE_TIMEOUT = 2.0
# `--port 8888` / `--port=8888` in a container's command: vLLM's (and most servers') flag.
_PORT_FLAG_RE = re.compile(r"--port[= ](\d+)\b")


@dataclass(frozen=True)
class Slot:
    """The containers that hold a service's slot, sorted by what a swap may do to them."""

    owned: tuple[ContainerInfo, ...] = ()
    adopted: tuple[ContainerInfo, ...] = ()
    foreign: tuple[tuple[ContainerInfo, str], ...] = ()  # (container, how it holds the slot)
    port: int | None = None
    outside_listener: bool = False  # the port answers and no container explains it

    @property
    def to_replace(self) -> list[ContainerInfo]:
        """What the swap stops and removes: Arbiter's own containers, then adopted ones."""
        return [*self.owned, *self.adopted]

    @property
    def ok(self) -> bool:
        return not self.foreign and not self.outside_listener


def _command_port(container: ContainerInfo) -> int | None:
    """The `--port` its command names, when it names one."""
    command = container.command  # docker prints it Go-quoted (strconv.Quote)
    with contextlib.suppress(ValueError):
        decoded = json.loads(command)
        if isinstance(decoded, str):
            command = decoded
    match = _PORT_FLAG_RE.search(command)
    return int(match.group(1)) if match else None


def _may_listen_on(container: ContainerInfo, port: int | None) -> bool:
    """Running, and the port is reachable through it: published, or on the host network
    with no `--port` naming another one."""
    if not container.running or port is None:
        return False
    if port in container.host_ports:
        return True
    named = _command_port(container)
    return container.host_network and (named is None or named == port)


def classify(
    containers: list[ContainerInfo],
    *,
    container_name: str,
    port: int | None,
    adopt: tuple[str, ...] | list[str] = (),
    port_answers: bool = False,
) -> Slot:
    """Sort `docker ps --all` rows into owned, adopted and foreign holders of the slot."""
    adopt_names = set(adopt)
    owned: list[ContainerInfo] = []
    adopted: list[ContainerInfo] = []
    others: list[ContainerInfo] = []
    for container in containers:
        if container.name in adopt_names:
            adopted.append(container)
        elif container.managed:
            if container.name == container_name or _may_listen_on(container, port):
                owned.append(container)
        else:
            others.append(container)
    foreign: list[tuple[ContainerInfo, str]] = []
    for container in others:
        if container.name == container_name:
            foreign.append((container, f"has the name {container_name} the launch needs"))
        elif port is not None and container.running and port in container.host_ports:
            foreign.append((container, f"publishes port {port}"))
    explained = any(_may_listen_on(c, port) for c in [*owned, *adopted]) or any(
        port in c.host_ports for c, _ in foreign
    )
    outside = False
    if port_answers and not explained:
        listed = {c.id for c, _ in foreign}
        on_host = [
            c for c in others if c.id not in listed and c.host_network and _may_listen_on(c, port)
        ]
        how = f"runs with host networking while port {port} answers"
        foreign += [(c, how) for c in on_host]
        outside = not on_host and not foreign
    return Slot(tuple(owned), tuple(adopted), tuple(foreign), port, outside)


def describe_foreign(slot: Slot, service_name: str, host_name: str, adopt: tuple[str, ...]) -> str:
    """What holds the slot, and the inventory line that hands it to Arbiter."""
    held = "; ".join(
        f"container {c.name} (image {c.image or 'unknown'}, {c.state}) {how}"
        for c, how in slot.foreign
    )
    names = [*adopt, *(c.name for c, _ in slot.foreign if c.name not in adopt)]
    return (
        f"{held} on {host_name}, and Arbiter did not start it: it is left alone. To let "
        f"swaps stop and replace it, add `adopt_containers: [{', '.join(names)}]` to "
        f"service {service_name} in the inventory"
    )


def describe(slot: Slot, service_name: str, host_name: str, adopt: tuple[str, ...]) -> str:
    """The detail of pre-flight's `slot` check."""
    if slot.foreign:
        return describe_foreign(slot, service_name, host_name, adopt)
    if slot.outside_listener:
        return (
            f"port {slot.port} of {host_name} answers, but no container there holds it: a "
            f"process outside docker listens on it; stop it, or give service {service_name} "
            "another port"
        )
    if not slot.to_replace:
        return f"port {slot.port} of service {service_name} is free on {host_name}"
    parts = [f"{c.name} ({c.state})" for c in slot.owned]
    parts += [f"{c.name} ({c.state}, adopted)" for c in slot.adopted]
    return f"replaces {', '.join(parts)}"


async def port_answers(base_url: str, timeout: float = PORT_PROBE_TIMEOUT) -> bool:
    """Whether something accepts a TCP connection on the service's host and port."""
    parts = urlsplit(base_url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    if not parts.hostname:
        return False
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, port), timeout
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), timeout)
    return True
