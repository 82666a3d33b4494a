"""Rendered dashboard fragments, shared by the page, the poll views and the socket."""

from django.template.loader import render_to_string

from arbiter.api.snapshot import GpuStatus, gpu_status, host_status, service_status
from arbiter.broker.accounting import client_usage
from arbiter.broker.quotas import key_quotas
from arbiter.models import GpuSample, Host, Service
from dashboard.panels.history import (
    LONG_POINTS,
    LONG_WINDOW,
    empty_history,
    gpu_history,
    history_with_tick,
    long_history,
    memory_pct,
)


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
        {
            **gpu,
            "memory_pct": gpu_memory_pct(gpu),
            "history": history.get(gpu["index"]) or empty_history(),
        }
        for gpu in status["gpus"]
    ]
    return status


def gpu_memory_pct(gpu: GpuStatus) -> float | None:
    """The memory in use, in percent, as the plots draw it (next to their lines)."""
    return memory_pct(gpu["memory_used_mib"], gpu["memory_total_mib"])


def host_history_view(host: Host) -> dict:
    """A host's status with each GPU's longer, averaged history (its history page); a GPU
    that has samples in the window but none now (a driver fault) still has its plot."""
    status = dict(host_status(host))
    history = long_history(host.pk)
    current = {gpu["index"]: {**gpu, "memory_pct": gpu_memory_pct(gpu)} for gpu in status["gpus"]}
    status["gpus"] = [
        {**current.get(index, {"index": index}), "history": history[index]}
        for index in sorted(history)
    ]
    return status


def host_history_panel(host: Host) -> str:
    """The history page's plots: included by the page, returned by its poll."""
    return render_to_string(
        "dashboard/partials/host_history_panel.html",
        {
            "host": host_history_view(host),
            "span_s": LONG_WINDOW.total_seconds(),
            "span_minutes": LONG_WINDOW.total_seconds() / 60,
            "point_s": LONG_WINDOW.total_seconds() / LONG_POINTS,
            "size": "wide",
        },
    )


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


def host_card_by_name(name: str) -> str:
    """One host's card as an htmx swap's answer (not out of band)."""
    host = Host.objects.by_name(name)
    return render_to_string("dashboard/partials/host_card.html", {"host": host_view(host)})


def clients_panel(oob: bool = False) -> str:
    """Per-client broker traffic (every process with REDIS_URL, else this one since start)."""
    return render_to_string(
        "dashboard/partials/clients_panel.html", {**clients_context(), "oob": oob}
    )
