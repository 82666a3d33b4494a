"""System checks with stable ids."""

import ipaddress

from django.conf import settings
from django.core.checks import Error, Warning, register


@register()
def check_channel_layer_processes(app_configs, **kwargs):
    """arbiter.W001: the in-memory channel layer cannot reach across processes."""
    backend = settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")
    if backend.endswith("InMemoryChannelLayer") and settings.ARBITER_PROCESS_COUNT > 1:
        return [
            Warning(
                "The in-memory channel layer is used with more than one process: "
                "live updates published in one process never reach browsers "
                "connected to another.",
                hint="Set REDIS_URL to use channels_redis, or run a single process.",
                id="arbiter.W001",
            )
        ]
    return []


@register()
def check_webhook_allow_networks(app_configs, **kwargs):
    """arbiter.E002: ARBITER_WEBHOOK_ALLOW_NETWORKS must be CIDR networks."""
    errors = []
    for text in settings.ARBITER_WEBHOOK_ALLOW_NETWORKS:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            errors.append(
                Error(
                    f"ARBITER_WEBHOOK_ALLOW_NETWORKS: {text!r} is not a CIDR network.",
                    hint="Use comma-separated networks such as 10.0.5.0/24,fd00::/8.",
                    id="arbiter.E002",
                )
            )
    return errors
