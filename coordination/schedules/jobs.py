"""Registering a job: its fields checked in body order, then created or updated in place."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from functools import cache
from typing import Any
from zoneinfo import available_timezones

from django.db import transaction

from arbiter.errors import InvalidInput, NotFound
from arbiter.models import Host
from catalog.models import CatalogModel
from coordination.models import ScheduledJob
from coordination.schedules.cron import shown, validate_cron
from coordination.schedules.periods import shortest_gap_seconds

JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_NAME = 200
MAX_OWNER = 200
MAX_DESCRIPTION = 2000
MAX_HOLD_SECONDS = 86400  # a warm-up's system lease: at most a day after the run
# Found by available_timezones() on most systems, but not IANA zone names: `localtime`
# is whatever the server is set to, the other two are tzdata build artefacts.
NOT_IANA = {"localtime", "posixrules", "Factory"}


@cache
def iana_timezones() -> frozenset[str]:
    return frozenset(available_timezones() - NOT_IANA)


def validate_timezone(name: str) -> str:
    """`name` if it is an IANA timezone (`Europe/Riga`, `UTC`), else InvalidInput."""
    if not name:
        raise InvalidInput(
            "timezone: must not be empty (an IANA name such as `UTC`)", field="timezone"
        )
    if name in iana_timezones():
        return name
    hint = "an IANA name such as `Europe/Riga` or `UTC`"
    for known in iana_timezones():
        if known.lower() == name.lower():
            hint = f"did you mean `{known}`?"
            break
    raise InvalidInput(f"timezone: unknown timezone {shown(name, 64)}: {hint}", field="timezone")


def _has_control(text: str, allowed: str = "") -> bool:
    return any(
        unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") and c not in allowed for c in text
    )


def _text(data: Mapping[str, Any], field: str, limit: int, *, allowed: str = "") -> str:
    value = str(data.get(field) or "").strip()
    if len(value) > limit:
        raise InvalidInput(f"{field}: is longer than {limit} characters", field=field)
    if _has_control(value, allowed):
        raise InvalidInput(f"{field}: must not contain control characters", field=field)
    return value


def clean_job(data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of one job, checked in body order, or InvalidInput naming the first
    bad one. `target_model` comes back as the CatalogModel."""
    job_id = str(data.get("id") or "")
    if not JOB_ID_RE.fullmatch(job_id):
        raise InvalidInput(
            f"id: {shown(job_id)} is not a valid id: 1-100 of letters, digits, `.`, `_` "
            "and `-`, starting with a letter or digit",
            field="id",
        )
    name = _text(data, "name", MAX_NAME)
    if not name:
        raise InvalidInput("name: is required", field="name")
    owner = _text(data, "owner", MAX_OWNER)
    cron = validate_cron(str(data.get("cron") or ""))
    tz_name = validate_timezone(str(data.get("timezone") or ""))
    model_key = str(data.get("target_model") or "")
    target_model = CatalogModel.objects.filter(key=model_key).first() if model_key else None
    if target_model is None:
        raise InvalidInput(
            f"target_model: no catalog model with key {shown(model_key, 63)}",
            field="target_model",
        )
    description = _text(data, "description", MAX_DESCRIPTION, allowed="\n\r\t")
    warm_up = clean_warm_up(data.get("warm_up"), cron, tz_name)
    return {
        "job_id": job_id,
        "name": name,
        "owner": owner,
        "cron": cron,
        "timezone": tz_name,
        "target_model": target_model,
        "description": description,
        **warm_up,
    }


def clean_warm_up(data: Mapping[str, Any] | None, cron: str, tz_name: str) -> dict[str, Any]:
    """The warm-up's model fields (all cleared when there is none), or an error naming
    `warm_up.<field>`: an unknown host is NotFound (404); a lead longer than the
    shortest gap between two runs would warm up for the next run before this one."""
    if data is None:
        return {"warm_up_host": None, "warm_up_lead_seconds": 0, "warm_up_hold_seconds": 0}
    host_name = str(data.get("host") or "")
    host = Host.objects.filter(name=host_name).first() if host_name else None
    if host is None:
        raise NotFound(
            f"warm_up.host: no host named {shown(host_name, 63)} in the inventory",
            field="warm_up.host",
        )
    lead = data.get("lead_seconds")
    if not isinstance(lead, int) or isinstance(lead, bool) or lead < 0:
        raise InvalidInput(
            "warm_up.lead_seconds: must be a whole number of seconds, 0 or more",
            field="warm_up.lead_seconds",
        )
    period = shortest_gap_seconds(cron, tz_name)
    if period is not None and lead > period:
        raise InvalidInput(
            f"warm_up.lead_seconds: {lead} is longer than the cron period ({period:g} s "
            "between the closest two runs)",
            field="warm_up.lead_seconds",
        )
    hold = data.get("hold_seconds")
    if not isinstance(hold, int) or isinstance(hold, bool) or not 1 <= hold <= MAX_HOLD_SECONDS:
        raise InvalidInput(
            f"warm_up.hold_seconds: must be 1 to {MAX_HOLD_SECONDS} seconds",
            field="warm_up.hold_seconds",
        )
    return {
        "warm_up_host": host,
        "warm_up_lead_seconds": lead,
        "warm_up_hold_seconds": hold,
    }


def register_job(data: Mapping[str, Any]) -> tuple[ScheduledJob, bool]:
    """Create the job, or update the one with the same id in place. (job, created)."""
    with transaction.atomic():
        cleaned = clean_job(data)
        job_id = cleaned.pop("job_id")
        # update_or_create locks the row; two first POSTs of one id racing each other
        # end as one create and one update (get_or_create retries on the unique index).
        return ScheduledJob.objects.update_or_create(job_id=job_id, defaults=cleaned)
