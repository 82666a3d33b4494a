"""The API key a model's vLLM server demands, so Arbiter's own requests carry it.

vLLM started with `--api-key KEY [KEY ...]` (or, without that flag, with the
environment variable VLLM_API_KEY) answers every request whose path starts with `/v1`
with 401 `{"error": "Unauthorized"}` unless it carries `Authorization: Bearer KEY`;
`/health` and the other routes stay open (vllm-project/vllm
vllm/entrypoints/openai/server_utils.py, `AuthenticationMiddleware`; the flag is
`FrontendArgs.api_key: list[str] | None` in vllm/entrypoints/openai/cli_args.py, and
api_server.py uses `args.api_key or [envs.VLLM_API_KEY]`). The swap's health wait and
the service prober read the key from the catalog model that was launched.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from django.db.models import OuterRef, Subquery

from arbiter.models import Service, Swap

API_KEY_FLAG = "--api-key"
API_KEY_ENV = "VLLM_API_KEY"


def _flag_name(arg: str) -> str:
    # vLLM's parser takes --api_key as well as --api-key.
    return arg.split("=", 1)[0].replace("_", "-")


def api_key_from_flags(flags: Sequence[str]) -> str:
    """The first key of the last `--api-key` (argparse keeps the last), or ""."""
    key = ""
    for index, arg in enumerate(flags):
        if _flag_name(arg) != API_KEY_FLAG:
            continue
        if "=" in arg:
            key = arg.split("=", 1)[1]
        elif index + 1 < len(flags) and not flags[index + 1].startswith("-"):
            key = flags[index + 1]
    return key


def api_key_from_env_args(container_args: Sequence[str]) -> str:
    """VLLM_API_KEY given to the container as `--env=VLLM_API_KEY=…` / `-e VLLM_API_KEY=…`."""
    key = ""
    for index, arg in enumerate(container_args):
        name, eq, value = arg.partition("=")
        if name in ("--env", "-e") and eq:
            item = value
        elif arg in ("--env", "-e") and index + 1 < len(container_args):
            item = container_args[index + 1]
        else:
            continue
        variable, has_value, text = item.partition("=")
        if variable == API_KEY_ENV and has_value:
            key = text
    return key


def model_api_key(
    extra_engine_flags: Sequence[str] | None, extra_container_args: Sequence[str] | None = None
) -> str:
    """The key a model's server demands ("" when it demands none)."""
    return api_key_from_flags(extra_engine_flags or []) or api_key_from_env_args(
        extra_container_args or []
    )


def auth_headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def service_api_keys(service_ids: Sequence[int]) -> dict[int, str]:
    """Per service, the key of the model its latest complete swap launched."""
    latest = Swap.objects.filter(
        service_id=OuterRef("pk"), state=Swap.COMPLETE, dry_run=False, model__isnull=False
    ).order_by("-finished_at", "-pk")
    rows = (
        Service.objects.filter(pk__in=list(service_ids))
        .annotate(
            flags=Subquery(latest.values("model__extra_engine_flags")[:1]),
            container_args=Subquery(latest.values("model__extra_container_args")[:1]),
        )
        .values_list("pk", "flags", "container_args")
    )
    keys = {}
    for service_id, flags, container_args in rows:
        key = model_api_key(_as_list(flags), _as_list(container_args))
        if key:
            keys[service_id] = key
    return keys


def _as_list(value: object) -> list[str]:
    # A JSON column read through a subquery may come back as its text on some backends.
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return []
    return [str(item) for item in value] if isinstance(value, list) else []
