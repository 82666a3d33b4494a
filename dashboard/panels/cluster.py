"""Rendered dashboard fragments, shared by the page, the poll views and the socket."""

from django.template.loader import render_to_string

from arbiter.api.snapshot import gpu_status, host_status, service_status
from arbiter.models import GpuSample, Host, Service
from dashboard.panels.history import gpu_history, history_with_tick


def host_view(host: Host, latest: list[GpuSample] | None = None) -> dict:
    """A host's status with each GPU's recent history attached, as the cards need it;
    `latest`: the rows of the tick the sampler just wrote (see dashboard.panels.history)."""
    if latest is None:
        status = dict(host_status(host))
        history = gpu_history(host.pk)
    else:
        status = dict(host_status(host, [gpu_status(row) for row in latest]))
        history = history_with_tick(host.pk, latest)
    status["gpus"] = [
        {**gpu, "history": history.get(gpu["index"], {"utilization_pct": [], "memory_pct": []})}
        for gpu in status["gpus"]
    ]
    return status


def services_context() -> dict:
    """Tiles for enabled services; a disabled service has no tile, only its name in the
    list below them (with the button that enables it again)."""
    services = Service.objects.filter(in_inventory=True).select_related("host")
    return {
        "services": [service_status(s) for s in services if not s.disabled],
        "disabled_services": [s.name for s in services if s.disabled],
    }


def clients_context() -> dict:
    """Broker traffic per client (every process with REDIS_URL), and every key's quota
    usage (shared)."""
    from arbiter.broker.accounting import client_usage
    from arbiter.broker.quotas import key_quotas

    return {"clients": client_usage(), "key_quotas": key_quotas()}


def page_context() -> dict:
    return {
        "hosts": [host_view(h) for h in Host.objects.filter(in_inventory=True)],
        **services_context(),
        **clients_context(),
    }


def services_panel(oob: bool = False) -> str:
    return render_to_string(
        "dashboard/partials/services_panel.html", {**services_context(), "oob": oob}
    )


def hosts_panel(oob: bool = False) -> str:
    return render_to_string("dashboard/partials/hosts_panel.html", {**page_context(), "oob": oob})


def host_card(host_id: int, latest: list[GpuSample] | None = None) -> str:
    """One host's card, marked for an out-of-band swap by its stable id."""
    host = Host.objects.get(pk=host_id)
    return render_to_string(
        "dashboard/partials/host_card.html", {"host": host_view(host, latest), "oob": True}
    )


def clients_panel(oob: bool = False) -> str:
    """Per-client broker traffic (every process with REDIS_URL, else this one since start)."""
    return render_to_string(
        "dashboard/partials/clients_panel.html", {**clients_context(), "oob": oob}
    )
