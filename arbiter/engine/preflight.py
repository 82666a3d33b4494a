"""Pre-flight checks of a swap: can this model be served on this host, and how exactly.

Run by `POST /api/swap/{key}/validate` and before every swap. Every check is reported
with ok/detail, and the last one is the exact launch command. Nothing here changes
anything anywhere: the only remote commands are read-only (`docker version`,
`docker ps`, the catalog's disk status).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TypedDict

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import Max

from arbiter.engine import ssh
from arbiter.engine.launch import (
    DOCKER_VERSION_ARGV,
    ContainerInfo,
    build_ps_argv,
    build_run_argv,
    containers_to_replace,
    display,
    gpu_indices,
    launch_field_problems,
    parse_ps,
    service_port,
)
from arbiter.errors import ArbiterError, InvalidInput, NotFound, SshError
from arbiter.models import GpuSample, Host, Service
from catalog.disk import model_disk_status, model_host_path
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

    @property
    def command(self) -> str:
        return display(self.argv) if self.argv else ""

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")


@dataclass
class Preflight:
    """The checks, and the plan they were made for (None when the model is gone)."""

    checks: list[Check]
    plan: LaunchPlan | None
    replaced: list[ContainerInfo] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    def as_dicts(self) -> list[CheckOut]:
        return [check.as_dict() for check in self.checks]


# -- reading the database --------------------------------------------------------------
def vllm_service(host: Host) -> Service | None:
    """The service a swap replaces on a host: its (first) enabled vLLM service."""
    return (
        Service.objects.filter(host=host, kind=Service.KIND_VLLM, in_inventory=True, disabled=False)
        .order_by("name")
        .first()
    )


def resolve_host(model: CatalogModel, host_name: str | None) -> Host:
    """The named host, else the model's default host, else the only host there is."""
    if host_name:
        host = Host.objects.filter(name=host_name, in_inventory=True).first()
        if host is None:
            raise NotFound(f"no host named {host_name!r} in the inventory", field="host")
        return host
    if model.default_host_id is not None:
        host = Host.objects.filter(pk=model.default_host_id, in_inventory=True).first()
        if host is not None:
            return host
    hosts = list(Host.objects.filter(in_inventory=True)[:2])
    if len(hosts) == 1:
        return hosts[0]
    raise InvalidInput(
        f"host: {model.key!r} has no default host and the inventory has "
        f"{'no hosts' if not hosts else 'several'}; name the host",
        field="host",
    )


def get_catalog_model(key: str) -> CatalogModel:
    model = CatalogModel.objects.filter(key=key).first()
    if model is None:
        raise NotFound(f"no catalog model with key {key!r}", field="model")
    return model


def host_gpu_count(host_id: int) -> int | None:
    """How many GPUs the host's latest sample listed (None before the first sample)."""
    latest = GpuSample.objects.filter(host_id=host_id).aggregate(at=Max("taken_at"))["at"]
    if latest is None:
        return None
    return GpuSample.objects.filter(host_id=host_id, taken_at=latest).count() or None


def load_plan(model_key: str, host_name: str) -> LaunchPlan | None:
    """The plan for serving `model_key` on `host_name`; None when the model is gone."""
    model = CatalogModel.objects.filter(key=model_key).first()
    if model is None:
        return None
    host = Host.objects.get(name=host_name)
    service = vllm_service(host)
    gpu_count = host_gpu_count(host.pk)
    argv: list[str] = []
    argv_error = ""
    port = None
    port_users: list[str] = []
    if service is None:
        argv_error = f"host {host.name} has no enabled vLLM service to serve models"
    else:
        try:
            port = service_port(service.base_url)
            argv = build_run_argv(model, host, service, gpu_count=gpu_count)
        except ArbiterError as error:
            argv_error = error.message
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
        host_path=model_host_path(model),
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
        gpus=gpu_indices(model.tensor_parallel_size, gpu_count),
        gpu_memory_utilization=model.gpu_memory_utilization,
        tensor_parallel_size=model.tensor_parallel_size,
        tensor_parallel_hosts=tuple(model.tensor_parallel_hosts or ()),
        estimated_vram_mib=model.estimated_vram_mib,
        vram_budget_mib=host.vram_budget_mib,
        vram_margin_mib=host.vram_margin_mib,
        argv=tuple(argv),
        argv_error=argv_error,
        catalog_problems=tuple(launch_field_problems(model)),
        port_users=tuple(port_users),
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


def container_check(plan: LaunchPlan) -> Check:
    problems = [r for f, r in plan.catalog_problems if f == "container_name"]
    if problems:
        return Check("container", False, f"container_name: {problems[0]}")
    if plan.tensor_parallel_hosts:
        return Check(
            "container", False, "multi-host tensor parallelism is not supported by swaps yet"
        )
    if plan.gpu_count is not None and plan.tensor_parallel_size > plan.gpu_count:
        return Check(
            "container",
            False,
            f"tensor_parallel_size {plan.tensor_parallel_size} needs more GPUs than "
            f"{plan.host_name} has ({plan.gpu_count})",
        )
    gpus = "all GPUs" if plan.gpus is None else f"GPU {', '.join(map(str, plan.gpus))}"
    return Check("container", True, f"{plan.container_name} on {gpus}")


def ports_check(plan: LaunchPlan) -> Check:
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


async def replaced_containers(plan: LaunchPlan) -> list[ContainerInfo]:
    result = await ssh.run(plan.target, build_ps_argv(), timeout=READ_TIMEOUT)
    return containers_to_replace(parse_ps(result.stdout), plan.container_name, plan.service_port)


async def preflight(model_key: str, host_name: str) -> Preflight:
    """Every check for serving `model_key` on `host_name`, with the plan behind them."""
    plan = await sync_to_async(load_plan)(model_key, host_name)
    if plan is None:
        return Preflight([Check("model", False, f"{model_key!r} is not in the catalog")], None)
    checks = [Check("model", True, f"{plan.model_key} serves as {plan.served_name!r}")]
    if plan.catalog_problems:
        field_name, reason = plan.catalog_problems[0]
        checks.append(Check("catalog", False, f"{field_name}: {reason}"))
    else:
        checks.append(Check("catalog", True, "launch settings valid"))
    host = await host_check(plan)
    checks.append(host)
    if host.ok:
        checks.append(await files_check(plan))
    else:
        checks.append(Check("files", False, "not checked: host unreachable"))
    checks.append(vram_check(plan))
    container = container_check(plan)
    replaced: list[ContainerInfo] = []
    if host.ok and container.ok:
        try:
            replaced = await replaced_containers(plan)
        except SshError as error:
            container = Check("container", False, f"cannot list containers: {error.message}")
        else:
            if replaced:
                names = ", ".join(f"{c.name} ({c.state})" for c in replaced)
                container = Check("container", True, f"{container.detail}; replaces {names}")
    checks.append(container)
    checks.append(ports_check(plan))
    if plan.argv:
        checks.append(Check("launch_command", True, plan.command))
    else:
        checks.append(Check("launch_command", False, plan.argv_error or "no command"))
    return Preflight(checks, plan, replaced)


async def run_preflight(model_key: str, host_name: str) -> list[Check]:
    """The checks alone (see `preflight` for the plan behind them)."""
    return (await preflight(model_key, host_name)).checks
