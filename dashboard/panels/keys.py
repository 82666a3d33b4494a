"""The API keys page's parts: the new-key form (`#key-create`) and the key table
(`#keys-table`). Admins only, never pushed: rendered for the person who asked."""

from __future__ import annotations

from typing import Any

from django.template.loader import render_to_string

from arbiter.broker.quotas import current_usage
from arbiter.models import ApiKey


def keys_context() -> dict[str, Any]:
    keys = list(ApiKey.objects.order_by("-created_at"))
    usage = current_usage([k.pk for k in keys])
    for key in keys:  # what each key used against its quotas (keys_table.html)
        key.usage_minute, key.usage_tokens = usage[key.pk]  # type: ignore[attr-defined]
    return {"api_keys": keys, "key_roles": ApiKey.ROLE_CHOICES}


def keys_table(*, oob: bool = False, error: str = "") -> str:
    """`#keys-table`; `error`: why the last revoke failed, shown above the rows."""
    context = {**keys_context(), "oob": oob, "error": error}
    return render_to_string("dashboard/partials/keys_table.html", context)
