"""What each person sees: action controls only for the levels that may use them.

Templates wrap every action control in `{% needs "operator" %}…{% endneeds %}` (or
`"admin"`; dashboard_tags). A template rendered for one person (the page, a poll view:
the `roles` context processor puts `viewer_level` into its context) keeps or drops the
block right there.

A fragment pushed over the socket is rendered once, by the engine, for every viewer, so
it cannot know who will see it. Rendered without `viewer_level`, a block is kept between
comment markers (`<!--needs:admin-->…<!--/needs:admin-->`), and each socket's consumer
cuts the blocks its person may not use (`for_level`) before sending: a viewer's browser
never receives an action it may not take, and the engine's single render stays. User
text is autoescaped, so it can never forge a marker. The server refuses the actions with
403 anyway; this is the UI half.
"""

from __future__ import annotations

import re
from typing import Any

from django.http import HttpRequest

from arbiter.roles import ADMIN, LEVELS, OPERATOR, level_of

GATED = (OPERATOR, ADMIN)


def reaches(level: str | None, needed: str) -> bool:
    """Whether `level` (from arbiter.roles.level_of; None: nobody) reaches `needed`."""
    return level is not None and LEVELS[level] >= LEVELS[needed]


def open_marker(needed: str) -> str:
    return f"<!--needs:{needed}-->"


def close_marker(needed: str) -> str:
    return f"<!--/needs:{needed}-->"


def _block(needed: str) -> re.Pattern[str]:
    return re.compile(f"{re.escape(open_marker(needed))}.*?{re.escape(close_marker(needed))}", re.S)


_BLOCKS = {needed: _block(needed) for needed in GATED}
_MARKERS = re.compile(r"<!--/?needs:(?:operator|admin)-->")


def for_level(html: str, level: str | None) -> str:
    """A broadcast render made personal: the blocks `level` may not use are cut out,
    the markers of the others removed. Blocks of one level never nest in each other."""
    for needed in GATED:  # operator first: an admin block inside one goes with it
        if not reaches(level, needed):
            html = _BLOCKS[needed].sub("", html)
    return _MARKERS.sub("", html)


def request_level(request: HttpRequest) -> str | None:
    return level_of(request.user)


def personal(request: HttpRequest, html: str) -> str:
    """A fragment rendered without a request (shared with pushes), cut for this person."""
    return for_level(html, request_level(request))


def roles(request: HttpRequest) -> dict[str, Any]:
    """Context processor: the person's level and what it allows, for every page."""
    level = request_level(request)
    return {
        "viewer_level": level,
        "can_operate": reaches(level, OPERATOR),
        "can_admin": reaches(level, ADMIN),
    }
