"""Cron expressions: validated field by field (cronsim only says "Bad minute")."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from cronsim import CronSim, CronSimError

from arbiter.errors import InvalidInput

DIGITS_RE = re.compile(r"[0-9]+")  # not str.isdigit(): that also accepts "²" and "٣"
MAX_CRON = 200  # ScheduledJob.cron
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


def cron_error(reason: str, cron_field: CronField | None = None) -> InvalidInput:
    if cron_field is None:
        return InvalidInput(f"cron: {reason}", field="cron")
    return InvalidInput(
        f"cron: {cron_field.name}: {reason}", field="cron", cron_field=cron_field.name
    )


def shown(text: str, limit: int = 40) -> str:
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
        return f"{shown(value)} is not a number or a {field.symbols_kind} name ({first}-{last})"
    return f"{shown(value)} is not a number"


def _symbol_value(field: CronField, value: str) -> int:
    if DIGITS_RE.fullmatch(value):
        return int(value)
    return field.symbols.index(value.upper()) + (1 if field.name == "month" else 0)


def _term_problem(field: CronField, term: str) -> str:
    """Why cronsim rejected one comma-separated item of a field, in words."""
    base, slash, step = term.partition("/")
    if slash:
        if not DIGITS_RE.fullmatch(step):
            return f"step {shown(step)} in {shown(term)} is not a number"
        if int(step) == 0:
            return f"step 0 in {shown(term)} never advances"
    if "#" in base and field.name == "day of week":
        base, _, nth = base.partition("#")
        if not DIGITS_RE.fullmatch(nth) or not 1 <= int(nth) <= 5:
            return f"{shown('#' + nth)} must be #1 to #5 (the nth weekday of the month)"
    bounds = base.split("-", 1)
    for value in bounds:
        problem = _value_problem(field, value)
        if problem:
            return problem
    if len(bounds) == 2 and "*" not in bounds:
        start, end = (_symbol_value(field, value) for value in bounds)
        if end < start:
            return f"range {shown(base)} runs backwards"
    return (
        f"{shown(term)} is not valid: use numbers {field.low}-{field.high}, `*`, "
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
            f"nicknames like {shown(parts[0])} are not supported: write the five fields "
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
                raise cron_error(f"empty item in the list {shown(text)}", field)
            if not _probe(index, term):
                raise cron_error(_term_problem(field, term), field)
        raise cron_error(f"{shown(text)} is not valid", field)

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
