"""System checks with stable ids."""

from django.conf import settings
from django.core.checks import Warning, register


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
