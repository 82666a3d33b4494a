"""Pre-flight checks of a swap: can this model be served on this host, and how exactly.

Run by `POST /api/swap/{key}/validate` and before every swap. Every check is reported
with ok/detail, and the last one is the exact launch command. Nothing here changes
anything anywhere: the only remote commands are read-only (`docker version`,
`docker ps`, the catalog's disk status).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
from dataclasses import dataclass, field
from typing import TypedDict

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import Max

from arbiter.engine import host_checks, host_paths, ssh
from arbiter.engine.disk import model_disk_status, model_host_path
from arbiter.engine.host_memory import MemoryRequest, memory_request, sleep_refusal
from arbiter.engine.swaps import multi_node
from arbiter.engine.swaps import slot as slots
from arbiter.engine.swaps.docker_argv import (
    DOCKER_VERSION_ARGV,
    ContainerInfo,
    build_ps_argv,
    build_run_argv,
    display,
    gpu_indices,
    launch_field_problems,
    parse_ps,
    service_port,
)
from arbiter.engine.swaps.image_check import image_fit
from arbiter.errors import ArbiterError, InvalidInput, SshError
from arbiter.models import GpuSample, Host, Service
from catalog.models import CatalogModel

log = logging.getLogger(__name__)

READ_TIMEOUT = 15.0


class CheckOut(TypedDict):
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Check:
    """One pre-flight check and what it found."""

    name: str
    ok: bool
    detail: str

    def as_dict(self) -> CheckOut:
        return CheckOut(name=self.name, ok=self.ok, detail=self.detail)


@dataclass(frozen=True)
class LaunchPlan:
    """Everything a swap needs to know, read from the database once (plain values only)."""

    model_key: str
    served_name: str
    container_name: str
    local: bool
    host_path: str
    host_id: int
    host_name: str
    host_in_inventory: bool
    target: ssh.SshTarget
    service_id: int | None
    service_name: str
    base_url: str
    health_path: str
    service_port: int | None
    gpu_count: int | None
    gpus: tuple[int, ...] | None  # None: all of the host's GPUs
    gpu_memory_utilization: float
    tensor_parallel_size: int
    tensor_parallel_hosts: tuple[str, ...]
    estimated_vram_mib: int
    vram_budget_mib: int | None
    vram_margin_mib: int
    argv: tuple[str, ...]
    argv_error: str
    catalog_problems: tuple[tuple[str, str], ...]
    port_users: tuple[str, ...]  # other services on the host already using the port
    adopt_containers: tuple[str, ...] = ()  # the service's, from the inventory
    # What --gpu-memory-utilization asks for and why (engine.host_memory), and why the
    # model may not sleep on this host ("" when it may).
    memory: MemoryRequest | None = None
    sleep_refusal: str = ""
    image: str = ""  # the catalog's image and command (engine.image_check)
    image_command: tuple[str, ...] = ()  # the catalog's `command`: argv after the image
    # This host's place in a multi-node model (engine.multi_node): rank 0 is the head,
    # which serves the API; nnodes 1 for a single-host model.
    node_rank: int = 0
    nnodes: int = 1
    multi_node_mode: str = ""  # the catalog's multi_node, for a multi-node model
    kind: str = "llm"  # the catalog's kind: which request proves the model answers

    @property
    def head(self) -> bool:
        return self.node_rank == 0

    @property
    def multi_node(self) -> bool:
        return self.nnodes > 1

    @property
    def command(self) -> str:
        return display(self.argv) if self.argv else ""

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")


@dataclass
class Preflight:
    """The checks, and the plan they were made for (None when the model is gone)."""

    checks: list[Check]
    plan: LaunchPlan | None  # the head's (the only host's, for a single-host model)
    replaced: list[ContainerInfo] = field(default_factory=list)
    nodes: list[LaunchPlan] = field(default_factory=list)  # every host's, head first

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    def as_dicts(self) -> list[CheckOut]:
        return [check.as_dict() for check in self.checks]


# -- reading the database --------------------------------------------------------------
def resolve_host(model: CatalogModel, host_name: str | None) -> Host:
    """The named host, else the model's default host, else the only host there is."""
    if host_name:
        return Host.objects.by_name(host_name)
    if model.default_host_id is not None:
        host = Host.objects.in_inventory().filter(pk=model.default_host_id).first()
        if host is not None:
            return host
    hosts = list(Host.objects.in_inventory()[:2])
    if len(hosts) == 1:
        return hosts[0]
    raise InvalidInput(
        f"host: {model.key!r} has no default host and the inventory has "
        f"{'no hosts' if not hosts else 'several'}; name the host",
        field="host",
    )


def swap_hosts(model: CatalogModel, host_name: str | None) -> list[Host]:
    """Every host a swap of `model` works on, the head first.

    A multi-node model always swaps on all of its hosts: naming one of them (or none) is
    fine, naming another host is a 422.
    """
    if not multi_node.is_multi_node(model):
        return [resolve_host(model, host_name)]
    hosts = multi_node.pair_host_rows(model)
    if host_name and host_name not in {h.name for h in hosts}:
        Host.objects.by_name(host_name)  # 404 for a host the inventory does not have
        raise InvalidInput(
            f"host: {model.key} runs across {', '.join(h.name for h in hosts)} "
            f"(tensor_parallel_hosts); name one of them, or no host",
            field="host",
        )
    return hosts


def host_gpu_count(host_id: int) -> int | None:
    """How many GPUs the host's latest sample listed (None before the first sample)."""
    latest = GpuSample.objects.filter(host_id=host_id).aggregate(at=Max("taken_at"))["at"]
    if latest is None:
        return None
    return GpuSample.objects.filter(host_id=host_id, taken_at=latest).count() or None


def plan_host_names(model_key: str, host_name: str) -> list[str]:
    """The hosts a swap of the model works on ([host_name] for a single-host model)."""
    model = CatalogModel.objects.filter(key=model_key).first()
    if model is None or not multi_node.is_multi_node(model):
        return [host_name]
    return list(model.tensor_parallel_hosts)


def load_plans(model_key: str, host_name: str, swap_id: int | None = None) -> list[LaunchPlan]:
    """The plan of every host the swap works on, the head first ([] when the model is
    gone): one for a single-host model, one per host of a multi-node model."""
    model = CatalogModel.objects.filter(key=model_key).first()
    if model is None:
        return []
    if not multi_node.is_multi_node(model):
        plan = load_plan(model_key, host_name, swap_id)
        return [plan] if plan else []
    names = list(model.tensor_parallel_hosts)
    present = set(Host.objects.filter(name__in=names).values_list("name", flat=True))
    plans = [load_plan(model_key, name, swap_id) for name in names if name in present]
    return [plan for plan in plans if plan is not None]


def _node_role(model: CatalogModel, host: Host) -> tuple[multi_node.NodeRole | None, str]:
    """This host's role in a multi-node model, or why there is none."""
    try:
        hosts = multi_node.pair_host_rows(model)
        head_service = Service.objects.vllm_on(hosts[0])
        if head_service is None:
            return None, f"head host {hosts[0].name} has no enabled vLLM service to serve models"
        roles = multi_node.node_roles(model, hosts, service_port(head_service.base_url))
    except ArbiterError as error:
        return None, error.message
    for role, row in zip(roles, hosts, strict=True):
        if row.pk == host.pk:
            return role, ""
    return None, f"{host.name} is not one of {model.key}'s tensor_parallel_hosts"


def load_plan(model_key: str, host_name: str, swap_id: int | None = None) -> LaunchPlan | None:
    """The plan for serving `model_key` on `host_name`; None when the model is gone.

    With `swap_id` the launch command carries the swap's label (`arbiter.swap=ID`). For
    a multi-node model the plan is this host's part (`node_rank`, its own command).
    """
    model = CatalogModel.objects.filter(key=model_key).first()
    if model is None:
        return None
    host = Host.objects.get(name=host_name)
    service = Service.objects.vllm_on(host)
    gpu_count = host_gpu_count(host.pk)
    memory = memory_request(model, host, service)
    argv: list[str] = []
    argv_error = ""
    port = None
    port_users: list[str] = []
    role, role_error = None, ""
    if multi_node.is_multi_node(model):
        role, role_error = _node_role(model, host)
    if role_error:
        argv_error = role_error
    elif service is None and (role is None or role.head):
        argv_error = f"host {host.name} has no enabled vLLM service to serve models"
    else:
        try:
            port = service_port(service.base_url) if service else None
            argv = build_run_argv(
                model,
                host,
                service,
                gpu_count=gpu_count,
                swap_id=swap_id,
                gpu_memory_utilization=memory.utilization,
                node=role,
            )
        except ArbiterError as error:
            argv_error = error.message
    if service is not None:
        others = Service.objects.filter(host=host, in_inventory=True).exclude(pk=service.pk)
        for other in others:
            try:
                if port is not None and service_port(other.base_url) == port:
                    port_users.append(other.name)
            except ArbiterError:
                continue
    timeout = settings.ARBITER_SSH_CONNECT_TIMEOUT
    return LaunchPlan(
        model_key=model.key,
        served_name=model.served_name,
        container_name=model.container_name,
        local=model.is_local,
        host_path=model_host_path(model, host_paths.hub_cache_dir(host)),
        host_id=host.pk,
        host_name=host.name,
        host_in_inventory=host.in_inventory,
        target=ssh.SshTarget.from_host(host, connect_timeout=timeout),
        service_id=service.pk if service else None,
        service_name=service.name if service else "",
        base_url=service.base_url if service else "",
        health_path=service.health_path if service else "/health",
        service_port=port,
        gpu_count=gpu_count,
        gpus=gpu_indices(model.tensor_parallel_size // (role.nnodes if role else 1), gpu_count),
        gpu_memory_utilization=memory.utilization,
        tensor_parallel_size=model.tensor_parallel_size,
        tensor_parallel_hosts=tuple(model.tensor_parallel_hosts or ()),
        estimated_vram_mib=model.estimated_vram_mib,
        vram_budget_mib=host.vram_budget_mib,
        vram_margin_mib=host.vram_margin_mib,
        argv=tuple(argv),
        argv_error=argv_error,
        catalog_problems=tuple(launch_field_problems(model)),
        port_users=tuple(port_users),
        adopt_containers=tuple(service.adopt_containers or ()) if service else (),
        memory=memory,
        sleep_refusal=(
            multi_node.sleep_refusal(model) if role else sleep_refusal(model, memory.unified)
        ),
        image=model.image,
        image_command=tuple(model.command or ()),
        node_rank=role.rank if role else 0,
        nnodes=len(model.tensor_parallel_hosts) if multi_node.is_multi_node(model) else 1,
        multi_node_mode=model.multi_node if multi_node.is_multi_node(model) else "",
        kind=model.kind,
    )


# -- the checks ------------------------------------------------------------------------
def _human_bytes(size: int | None) -> str:
    if size is None:
        return "size unknown"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{value:.1f} TiB"


def vram_check(plan: LaunchPlan) -> Check:
    if not plan.estimated_vram_mib:
        return Check("vram", True, "no VRAM estimate in the catalog; not checked")
    if plan.vram_budget_mib is None:
        return Check("vram", True, f"needs ~{plan.estimated_vram_mib} MiB; host has no budget set")
    budget = plan.vram_budget_mib - plan.vram_margin_mib
    fits = plan.estimated_vram_mib <= budget
    detail = (
        f"needs ~{plan.estimated_vram_mib} MiB of {budget} MiB "
        f"(budget {plan.vram_budget_mib} − margin {plan.vram_margin_mib})"
    )
    return Check("vram", fits, detail if fits else f"does not fit: {detail}")


def memory_check(plan: LaunchPlan) -> Check:
    """What --gpu-memory-utilization asks for against what the host has (host_memory)."""
    if plan.memory is None:
        return Check("memory", True, f"requests {plan.gpu_memory_utilization:g}")
    ok, detail = plan.memory.verdict()
    return Check("memory", ok, detail)


def sleep_check(plan: LaunchPlan) -> Check:
    """Sleep mode on unified memory only when the model opts in (host_memory)."""
    if plan.sleep_refusal:
        return Check("sleep_mode", False, plan.sleep_refusal)
    unified = plan.memory is not None and plan.memory.unified
    return Check("sleep_mode", True, "allowed" if unified else "allowed (discrete GPU memory)")


def container_check(plan: LaunchPlan) -> Check:
    problems = [r for f, r in plan.catalog_problems if f == "container_name"]
    if problems:
        return Check("container", False, f"container_name: {problems[0]}")
    per_host = plan.tensor_parallel_size // plan.nnodes
    if plan.gpu_count is not None and per_host > plan.gpu_count:
        share = f" ({per_host} per host of {plan.nnodes})" if plan.multi_node else ""
        return Check(
            "container",
            False,
            f"tensor_parallel_size {plan.tensor_parallel_size}{share} needs more GPUs than "
            f"{plan.host_name} has ({plan.gpu_count})",
        )
    gpus = "all GPUs" if plan.gpus is None else f"GPU {', '.join(map(str, plan.gpus))}"
    return Check("container", True, f"{plan.container_name} on {gpus}")


def ports_check(plan: LaunchPlan) -> Check:
    if plan.multi_node and not plan.head:
        return Check("ports", True, "worker: no API server (--headless), host networking")
    if plan.service_id is None:
        return Check("ports", False, plan.argv_error)
    if plan.service_port is None:
        return Check("ports", False, f"cannot read the port of {plan.base_url!r}")
    if plan.port_users:
        return Check(
            "ports",
            False,
            f"port {plan.service_port} of service {plan.service_name} is also used by "
            f"{', '.join(plan.port_users)} on {plan.host_name}",
        )
    problems = [r for f, r in plan.catalog_problems if f == "port"]
    if problems:
        return Check("ports", False, f"port: {problems[0]}")
    if plan.multi_node:
        where = f"the head serves on host port {plan.service_port}"
        return Check("ports", True, f"{where} (host networking)")
    return Check("ports", True, f"host port {plan.service_port} → container port (catalog)")


async def host_check(plan: LaunchPlan) -> Check:
    if not plan.host_in_inventory:
        return Check("host", False, f"{plan.host_name} is no longer in the inventory")
    try:
        result = await ssh.run(plan.target, DOCKER_VERSION_ARGV, timeout=READ_TIMEOUT, check=False)
    except SshError as error:
        return Check("host", False, error.message)
    if result.exit_status != 0:
        reason = result.stderr.strip() or f"status {result.exit_status}"
        return Check("host", False, f"{plan.host_name} is reachable but docker failed: {reason}")
    version = result.stdout.strip() or "unknown version"
    return Check("host", True, f"{plan.host_name} reachable over SSH; docker {version}")


async def files_check(plan: LaunchPlan) -> Check:
    roots = list(settings.ARBITER_MODEL_ROOTS)
    try:
        status = await model_disk_status(plan.target, plan.host_path, local=plan.local, roots=roots)
    except SshError as error:
        return Check("files", False, f"cannot check {plan.host_path}: {error.message}")
    if status.present:
        where = status.path + (f" ({status.detail})" if status.detail else "")
        return Check("files", True, f"present at {where}, {_human_bytes(status.size_bytes)}")
    if plan.local:
        return Check("files", False, f"{plan.host_path}: {status.detail or 'not found'}")
    return Check(
        "files", True, f"not in the hub cache of {plan.host_name} yet: downloaded at start"
    )


async def host_preconditions(plan: LaunchPlan) -> list[Check]:
    """The host checks a swap needs (arbiter.engine.host_checks.swap_checks)."""
    found = await host_checks.swap_checks(
        plan.target,
        local=plan.local,
        host_path=plan.host_path,
        hub_cache=posixpath.dirname(plan.host_path.rstrip("/")),
        user=plan.target.user,
    )
    return [
        Check(c.name, c.ok, c.detail if c.ok or not c.fix else f"{c.detail}. Fix: {c.fix}")
        for c in found
    ]


async def read_slot(plan: LaunchPlan) -> slots.Slot:
    """Who holds the service's slot on the host (see `arbiter.engine.swaps.slot`)."""
    result = await ssh.run(plan.target, build_ps_argv(), timeout=READ_TIMEOUT)
    answers = bool(plan.base_url) and await slots.port_answers(plan.base_url)
    return slots.classify(
        parse_ps(result.stdout),
        container_name=plan.container_name,
        port=plan.service_port,
        adopt=plan.adopt_containers,
        port_answers=answers,
    )


def slot_check(plan: LaunchPlan, slot: slots.Slot) -> Check:
    detail = slots.describe(slot, plan.service_name, plan.host_name, plan.adopt_containers)
    return Check("slot", slot.ok, detail)


async def host_part_checks(plan: LaunchPlan) -> tuple[list[Check], list[ContainerInfo]]:
    """Every check of one host's part, and the containers the swap would replace there."""
    checks: list[Check] = []
    host = await host_check(plan)
    checks.append(host)
    if host.ok:
        checks.append(await files_check(plan))
        checks += await host_preconditions(plan)
    else:
        checks.append(Check("files", False, "not checked: host unreachable"))
    checks.append(vram_check(plan))
    checks += [memory_check(plan), sleep_check(plan)]
    checks.append(Check("image", *await image_fit(plan, reachable=host.ok)))
    container = container_check(plan)
    replaced: list[ContainerInfo] = []
    slot = Check("slot", False, "not checked: host unreachable")
    if host.ok and (plan.service_id is not None or (plan.multi_node and not plan.head)):
        try:
            held = await read_slot(plan)
        except SshError as error:
            slot = Check("slot", False, f"cannot list containers: {error.message}")
        else:
            slot = slot_check(plan, held)
            replaced = held.to_replace if held.ok else []
    elif host.ok:
        slot = Check("slot", False, plan.argv_error)
    checks.append(container)
    checks.append(slot)
    checks.append(ports_check(plan))
    if plan.argv:
        checks.append(Check("launch_command", True, plan.command))
    else:
        checks.append(Check("launch_command", False, plan.argv_error or "no command"))
    return checks, replaced


def pair_check(plans: list[LaunchPlan], hosts: tuple[str, ...]) -> Check:
    """The multi-node unit as a whole: every host found, the mode Arbiter launches."""
    head = plans[0]
    missing = [name for name in hosts if name not in {p.host_name for p in plans}]
    if missing:
        return Check("pair", False, f"{', '.join(missing)} is not in the inventory")
    if head.multi_node_mode != "native":
        return Check(
            "pair",
            False,
            f"multi_node: {head.multi_node_mode!r} launches are not built yet; Arbiter "
            "launches multi-node models in vLLM's native mode (multi_node: native)",
        )
    per_host = head.tensor_parallel_size // head.nnodes
    return Check(
        "pair",
        True,
        f"{head.tensor_parallel_size} ranks across {', '.join(hosts)} ({per_host} GPU per "
        f"host); head {head.host_name} serves {head.url('/v1')}",
    )


async def preflight(model_key: str, host_name: str, *, swap_id: int | None = None) -> Preflight:
    """Every check for serving `model_key` on `host_name` (on every host of a
    multi-node model: each host's checks carry its name), with the plans behind them."""
    for name in await sync_to_async(plan_host_names)(model_key, host_name):
        with contextlib.suppress(ArbiterError):  # unreachable: the host check says so
            await host_paths.ensure_home_dir(name)  # the hub and compile caches' paths
    plans = await sync_to_async(load_plans)(model_key, host_name, swap_id)
    if not plans:
        return Preflight([Check("model", False, f"{model_key!r} is not in the catalog")], None)
    plan = plans[0]
    checks = [Check("model", True, f"{plan.model_key} serves as {plan.served_name!r}")]
    if plan.catalog_problems:
        field_name, reason = plan.catalog_problems[0]
        checks.append(Check("catalog", False, f"{field_name}: {reason}"))
    else:
        checks.append(Check("catalog", True, "launch settings valid"))
    if not plan.multi_node:
        found, replaced = await host_part_checks(plan)
        return Preflight(checks + found, plan, replaced, [plan])
    checks.append(pair_check(plans, plan.tensor_parallel_hosts))
    replaced = []
    parts = await asyncio.gather(*(host_part_checks(node) for node in plans))
    for node, (found, node_replaced) in zip(plans, parts, strict=True):
        role = "head" if node.head else f"worker {node.node_rank}"
        checks += [
            Check(
                f"{c.name} ({node.host_name})",
                c.ok,
                f"{role}: {c.detail}" if c.name == "host" else c.detail,
            )
            for c in found
        ]
        replaced += node_replaced
    return Preflight(checks, plans[0], replaced, plans)


async def run_preflight(model_key: str, host_name: str) -> list[Check]:
    """The checks alone (see `preflight` for the plan behind them)."""
    return (await preflight(model_key, host_name)).checks
