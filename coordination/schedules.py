"""The schedule registry: validate recurring jobs, compute their next runs, warn about them.

Schedulers outside Arbiter register their jobs so the dashboard can show what will swap
the GPU and when. Arbiter only stores and displays them: nothing here starts a task,
takes the lock, swaps or talks to a host.

Cron expressions are evaluated by cronsim (Debian cron semantics, including its DST
rules) in the job's own IANA timezone; every time handed out is UTC. cronsim says only
"Bad minute", so each field is probed on its own to report which one is wrong and why.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from itertools import islice
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo, available_timezones

from cronsim import CronSim, CronSimError
from django.db import transaction
from django.utils import timezone

from arbiter.errors import InvalidInput
from catalog.models import CatalogModel
from coordination.models import ScheduledJob

JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
DIGITS_RE = re.compile(r"[0-9]+")  # not str.isdigit(): that also accepts "²" and "٣"
MAX_CRON = 200  # ScheduledJob.cron
MAX_NAME = 200
MAX_OWNER = 200
MAX_DESCRIPTION = 2000
# Found by available_timezones() on most systems, but not IANA zone names: `localtime`
# is whatever the server is set to, the other two are tzdata build artefacts.
NOT_IANA = {"localtime", "posixrules", "Factory"}
# Only used to check that an expression parses and fires at all.
PROBE_START = datetime(2000, 1, 1)


@dataclass(frozen=True)
class CronField:
    """One of the five cron fields: its name in messages, its range, its symbolic names."""

    name: str
    low: int
    high: int
    symbols: tuple[str, ...] = ()
    symbols_kind: str = ""


CRON_FIELDS = (
    CronField("minute", 0, 59),
    CronField("hour", 0, 23),
    CronField("day of month", 1, 31),
    CronField(
        "month", 1, 12, tuple("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split()), "month"
    ),
    CronField("day of week", 0, 7, tuple("SUN MON TUE WED THU FRI SAT".split()), "weekday"),
)
FIELD_LIST = ", ".join(field.name for field in CRON_FIELDS)


class Schedule(Protocol):
    """What the run computations need of a job (a ScheduledJob, or anything shaped so)."""

    job_id: str
    cron: str
    timezone: str


# --- validation ----------------------------------------------------------------------


def cron_error(reason: str, cron_field: CronField | None = None) -> InvalidInput:
    if cron_field is None:
        return InvalidInput(f"cron: {reason}", field="cron")
    return InvalidInput(
        f"cron: {cron_field.name}: {reason}", field="cron", cron_field=cron_field.name
    )


def _shown(text: str, limit: int = 40) -> str:
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"`{text}`"


def _value_problem(field: CronField, value: str) -> str | None:
    if value == "*":
        return None
    if DIGITS_RE.fullmatch(value):
        if not field.low <= int(value) <= field.high:
            return f"{int(value)} is out of range {field.low}-{field.high}"
        return None
    if field.symbols and value.upper() in field.symbols:
        return None
    if field.symbols:
        first, last = field.symbols[0], field.symbols[-1]
        return f"{_shown(value)} is not a number or a {field.symbols_kind} name ({first}-{last})"
    return f"{_shown(value)} is not a number"


def _symbol_value(field: CronField, value: str) -> int:
    if DIGITS_RE.fullmatch(value):
        return int(value)
    return field.symbols.index(value.upper()) + (1 if field.name == "month" else 0)


def _term_problem(field: CronField, term: str) -> str:
    """Why cronsim rejected one comma-separated item of a field, in words."""
    base, slash, step = term.partition("/")
    if slash:
        if not DIGITS_RE.fullmatch(step):
            return f"step {_shown(step)} in {_shown(term)} is not a number"
        if int(step) == 0:
            return f"step 0 in {_shown(term)} never advances"
    if "#" in base and field.name == "day of week":
        base, _, nth = base.partition("#")
        if not DIGITS_RE.fullmatch(nth) or not 1 <= int(nth) <= 5:
            return f"{_shown('#' + nth)} must be #1 to #5 (the nth weekday of the month)"
    bounds = base.split("-", 1)
    for value in bounds:
        problem = _value_problem(field, value)
        if problem:
            return problem
    if len(bounds) == 2 and "*" not in bounds:
        start, end = (_symbol_value(field, value) for value in bounds)
        if end < start:
            return f"range {_shown(base)} runs backwards"
    return (
        f"{_shown(term)} is not valid: use numbers {field.low}-{field.high}, `*`, "
        "ranges `a-b`, lists `a,b` and steps `*/n`"
    )


def _probe(index: int, text: str) -> bool:
    """Does cronsim accept `text` as field `index`, with every other field `*`?"""
    parts = ["*"] * len(CRON_FIELDS)
    parts[index] = text
    try:
        CronSim(" ".join(parts), PROBE_START)
    except CronSimError:
        return False
    return True


def validate_cron(expr: str) -> str:
    """The expression with its fields joined by single spaces, or InvalidInput naming
    `cron` and, where one is at fault, the cron field (`minute` … `day of week`).

    Exactly five fields; no seconds or year field, no `@daily` nicknames (cronsim has
    none; write `0 0 * * *`). cronsim's extensions (`L`, `LW`, `5L`, `MON#2`) are kept.
    """
    if len(expr) > MAX_CRON:
        raise cron_error(f"is longer than {MAX_CRON} characters")
    parts = expr.split()
    if parts and parts[0].startswith("@"):
        raise cron_error(
            f"nicknames like {_shown(parts[0])} are not supported: write the five fields "
            f"({FIELD_LIST}), e.g. `0 0 * * *` for daily at midnight"
        )
    if len(parts) != len(CRON_FIELDS):
        got = f"got {len(parts)}" if parts else "got none"
        if len(parts) > len(CRON_FIELDS):
            got += " (a seconds or year field is not supported)"
        elif parts:
            missing = ", ".join(field.name for field in CRON_FIELDS[len(parts) :])
            got += f": {missing} missing"
        raise cron_error(f"expected 5 fields ({FIELD_LIST}), {got}")

    for index, (field, text) in enumerate(zip(CRON_FIELDS, parts, strict=True)):
        if _probe(index, text):
            continue
        for term in text.split(","):
            if term == "":
                raise cron_error(f"empty item in the list {_shown(text)}", field)
            if not _probe(index, term):
                raise cron_error(_term_problem(field, term), field)
        raise cron_error(f"{_shown(text)} is not valid", field)

    normalised = " ".join(parts)
    day_of_month, month = parts[2], parts[3]
    try:
        runs = CronSim(normalised, PROBE_START)
    except CronSimError:
        # Every field is fine alone: cronsim refuses days that no chosen month has.
        raise cron_error(
            f"{day_of_month} never occurs in month {month}, so the schedule never fires",
            CRON_FIELDS[2],
        ) from None
    try:
        next(runs)
    except StopIteration:
        raise cron_error(
            f"{day_of_month} with day of week {parts[4]} and month {month} matches no "
            "date in 50 years, so the schedule never fires",
            CRON_FIELDS[2],
        ) from None
    return normalised


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
    raise InvalidInput(f"timezone: unknown timezone {_shown(name, 64)}: {hint}", field="timezone")


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
            f"id: {_shown(job_id)} is not a valid id: 1-100 of letters, digits, `.`, `_` "
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
            f"target_model: no catalog model with key {_shown(model_key, 63)}",
            field="target_model",
        )
    description = _text(data, "description", MAX_DESCRIPTION, allowed="\n\r\t")
    return {
        "job_id": job_id,
        "name": name,
        "owner": owner,
        "cron": cron,
        "timezone": tz_name,
        "target_model": target_model,
        "description": description,
    }


def register_job(data: Mapping[str, Any]) -> tuple[ScheduledJob, bool]:
    """Create the job, or update the one with the same id in place. (job, created)."""
    with transaction.atomic():
        cleaned = clean_job(data)
        job_id = cleaned.pop("job_id")
        # update_or_create locks the row; two first POSTs of one id racing each other
        # end as one create and one update (get_or_create retries on the unique index).
        return ScheduledJob.objects.update_or_create(job_id=job_id, defaults=cleaned)


# --- next runs ------------------------------------------------------------------------


def _aware(moment: datetime | None) -> datetime:
    if moment is None:
        return timezone.now()
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("schedule times must be timezone-aware")
    return moment


def iter_runs(job: Schedule, after: datetime | None = None) -> Iterator[datetime]:
    """The job's run times strictly after `after` (default now), as UTC datetimes.

    Stops when cronsim finds nothing in 50 years. A stored row that no longer validates
    (a timezone dropped from tzdata) raises InvalidInput naming the field.
    """
    start = _aware(after)
    try:
        zone = ZoneInfo(validate_timezone(job.timezone))
        runs = CronSim(validate_cron(job.cron), start.astimezone(zone))
    except CronSimError as error:  # validate_cron and CronSim disagreeing: report, not 500
        raise cron_error(str(error)) from None
    last = start
    for local in runs:
        run = local.astimezone(UTC)
        # cronsim follows Debian cron across a DST fall-back: a job at a fixed local
        # time (`30 3 * * *`) runs in the first 03:30 only. Started inside the repeated
        # hour, it hands back that first 03:30, which is already in the past.
        if run <= last:
            continue
        last = run
        yield run


def next_runs(job: Schedule, count: int = 5, after: datetime | None = None) -> list[datetime]:
    """The next `count` run times after `after` (default now), computed in the job's
    timezone (DST as cronsim and Debian cron do it), returned in UTC."""
    return list(islice(iter_runs(job, after), count))


def runs_between(
    job: Schedule, start: datetime, end: datetime, limit: int = 2000
) -> list[datetime]:
    """Run times in (start, end), at most `limit` of them."""
    runs: list[datetime] = []
    for run in iter_runs(job, start):
        if run >= end or len(runs) >= limit:
            break
        runs.append(run)
    return runs


# --- warnings -------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleWarning:
    """Something the dashboard should point out about the registered jobs."""

    kind: Literal["lock_held", "collision"]
    job_ids: tuple[str, ...]
    runs: tuple[datetime, ...]  # UTC: the run concerned, or the two colliding runs
    message: str


def _hhmm(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _minutes(span: timedelta) -> str:
    minutes = span.total_seconds() / 60
    return f"{minutes:g} minute" + ("" if minutes == 1 else "s")


def schedule_warnings(
    jobs: Iterable[Schedule],
    held_until: datetime | None,
    window: timedelta = timedelta(minutes=10),
    horizon: timedelta = timedelta(hours=24),
    *,
    now: datetime | None = None,
) -> list[ScheduleWarning]:
    """Warnings about the jobs, computed from plain values (no database, no lock module).

    - `lock_held`: the job's next run falls before `held_until` (the lock's expiry, None
      when the lock is free): that run will find the GPU reserved. One per job.
    - `collision`: two jobs have runs at most `window` apart within `horizon` from now.
      One per pair of jobs, for their first such runs.
    Jobs whose stored cron or timezone no longer validates are skipped.
    """
    start = _aware(now)
    usable: list[tuple[Schedule, list[datetime]]] = []
    for job in jobs:
        try:
            usable.append((job, runs_between(job, start, start + horizon)))
        except InvalidInput:
            continue

    warnings: list[ScheduleWarning] = []
    if held_until is not None and _aware(held_until) > start:
        for job, _runs in usable:
            first = next_runs(job, 1, after=start)
            if first and first[0] < held_until:
                warnings.append(
                    ScheduleWarning(
                        "lock_held",
                        (job.job_id,),
                        (first[0],),
                        f"{job.job_id} fires at {_hhmm(first[0])} while the lock is held "
                        f"(until {_hhmm(held_until)})",
                    )
                )

    events = sorted((run, job.job_id) for job, runs in usable for run in runs)
    seen: set[tuple[str, str]] = set()
    low = 0
    for high, (run, job_id) in enumerate(events):
        while events[low][0] < run - window:
            low += 1
        for earlier, other_id in events[low:high]:
            pair = (other_id, job_id) if other_id < job_id else (job_id, other_id)
            if other_id == job_id or pair in seen:
                continue
            seen.add(pair)
            warnings.append(
                ScheduleWarning(
                    "collision",
                    (other_id, job_id),
                    (earlier, run),
                    f"{other_id} ({_hhmm(earlier)}) and {job_id} ({_hhmm(run)}) fire within "
                    f"{_minutes(window)} of each other",
                )
            )
    return warnings
