"""Who may do what: the role of a key or a person, and the role each route needs.

Three levels, lowest first:

- **read** — keys with role `inference` (which may also use the broker's `/v1`), people
  in the `viewer` group (and anonymous readers where `ARBITER_ANONYMOUS_READS` is on);
- **operator** — keys with role `operator`, people in the `operator` group: swaps, the
  swap lock, the catalog, schedules, downloads; reads webhooks;
- **admin** — keys with role `admin`, people in the `admin` group and staff users:
  inventory edits, API keys, webhooks, force release.

A higher level may do everything a lower one may.
"""

from __future__ import annotations

from typing import Any

from arbiter.models import ApiKey

READ, OPERATOR, ADMIN = "read", "operator", "admin"
LEVELS = {READ: 1, OPERATOR: 2, ADMIN: 3}
# Key roles and people's groups, mapped to their level.
KEY_LEVELS = {ApiKey.ROLE_INFERENCE: READ, ApiKey.ROLE_OPERATOR: OPERATOR, ApiKey.ROLE_ADMIN: ADMIN}
GROUP_LEVELS = {"viewer": READ, "operator": OPERATOR, "admin": ADMIN}


def level_of(principal: Any) -> str | None:
    """The level of an authenticated principal: an ApiKey, a user, or "anonymous"."""
    if principal is None:
        return None
    if isinstance(principal, ApiKey):
        return KEY_LEVELS.get(principal.role, READ)
    if principal == "anonymous":
        return READ
    if not getattr(principal, "is_authenticated", False):
        return None
    if getattr(principal, "is_staff", False) or getattr(principal, "is_superuser", False):
        return ADMIN
    names = set(principal.groups.values_list("name", flat=True))
    found = [GROUP_LEVELS[name] for name in names if name in GROUP_LEVELS]
    return max(found, key=LEVELS.__getitem__) if found else READ


def may(principal: Any, needed: str) -> bool:
    """Whether the principal's level reaches `needed` (READ, OPERATOR or ADMIN)."""
    level = level_of(principal)
    return level is not None and LEVELS[level] >= LEVELS[needed]
