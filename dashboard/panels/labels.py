"""Times as the coordination panels print them."""

from __future__ import annotations

import math
from datetime import UTC, datetime


def format_countdown(seconds: float) -> str:
    """'9:58', '1:02:03' (static/js/dashboard.js formats the ticker the same way)."""
    whole = max(0, math.ceil(seconds))  # rounded up: 0:00 only when it is over
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def utc_label(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
