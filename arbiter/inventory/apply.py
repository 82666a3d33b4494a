"""Write a validated `Inventory` into the database, in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction

from .config import HostConfig, Inventory, ServiceConfig
from .edits import keep_edits


@dataclass(frozen=True)
class ApplyResult:
    """What one apply changed, for the log line."""

    hosts_created: int = 0
    hosts_updated: int = 0
    hosts_retired: int = 0
    services_created: int = 0
    services_updated: int = 0
    services_retired: int = 0

    def __str__(self) -> str:
        return (
            f"hosts: {self.hosts_created} created, {self.hosts_updated} updated, "
            f"{self.hosts_retired} retired; services: {self.services_created} created, "
            f"{self.services_updated} updated, {self.services_retired} retired"
        )


def _host_fields(config: HostConfig, simulated: bool) -> dict[str, Any]:
    # Only configuration: live state belongs to the sampler, and trusted_host_keys to
    # `manage.py trust_host` — reloading the file must never undo an operator's trust.
    return {
        "address": config.address,
        "ssh_user": config.ssh_user,
        "ssh_port": config.ssh_port,
        "ssh_key": config.ssh_key or "",
        "known_hosts": config.known_hosts or "",
        "sampling": config.sampling,
        "vram_budget_mib": config.vram_budget_mib,
        "vram_margin_mib": config.vram_margin_mib,
        "hf_cache_dir": config.hf_cache_dir or "",
        "max_ssh_sessions": config.max_ssh_sessions,
        "cluster_address": config.cluster_address or "",
        "cluster_interface": config.cluster_interface or "",
        "simulated": simulated,
        "in_inventory": True,
    }


def _service_fields(config: ServiceConfig, host: Any) -> dict[str, Any]:
    # Live state (health, probes, loaded model) belongs to the prober.
    return {
        "host": host,
        "kind": config.kind,
        "base_url": config.base_url,
        "health_path": config.health_path,
        "capabilities": list(config.capabilities),
        "request_paths": list(config.request_paths),
        "vram_resident_mib": config.vram_resident_mib,
        "can_coexist_with": list(config.can_coexist_with),
        "load_route": config.load_route or "",
        "unload_route": config.unload_route or "",
        "load_method": config.load_method,
        "load_body": config.load_body,
        "unload_method": config.unload_method,
        "unload_body": config.unload_body,
        "adopt_containers": list(config.adopt_containers),
        "disabled": config.disabled,
        "in_inventory": True,
    }


def apply_inventory(inventory: Inventory) -> ApplyResult:
    """Upsert hosts and services by name; rows missing from the file are retired, not
    deleted, so their samples and swap history stay readable."""
    # Imported here so `load_inventory` stays usable before Django's apps are ready.
    from arbiter.models import Host, Service

    counts = {"hosts_created": 0, "hosts_updated": 0, "services_created": 0, "services_updated": 0}
    with transaction.atomic():
        # Fields edited in Arbiter keep their edit (see arbiter.inventory.edits).
        host_edits = dict(Host.objects.values_list("name", "inventory_overrides"))
        service_edits = dict(Service.objects.values_list("name", "inventory_overrides"))
        hosts_by_name = {}
        for host_config in inventory.hosts:
            host, created = Host.objects.update_or_create(
                name=host_config.name,
                defaults=keep_edits(
                    _host_fields(host_config, inventory.simulated),
                    host_edits.get(host_config.name) or {},
                ),
            )
            hosts_by_name[host.name] = host
            counts["hosts_created" if created else "hosts_updated"] += 1
        for service_config in inventory.services:
            _, created = Service.objects.update_or_create(
                name=service_config.name,
                defaults=keep_edits(
                    _service_fields(service_config, hosts_by_name[service_config.host]),
                    service_edits.get(service_config.name) or {},
                ),
            )
            counts["services_created" if created else "services_updated"] += 1
        hosts_retired = (
            Host.objects.filter(in_inventory=True)
            .exclude(name__in=hosts_by_name)
            .update(in_inventory=False)
        )
        services_retired = (
            Service.objects.filter(in_inventory=True)
            .exclude(name__in=[service.name for service in inventory.services])
            .update(in_inventory=False)
        )
    return ApplyResult(hosts_retired=hosts_retired, services_retired=services_retired, **counts)
