"""How inventory problems are collected and worded.

Every message reads `<file as given>: <key path>: <reason>` so an operator can jump
straight to the offending key; validation collects them all instead of stopping at
the first, because fixing a cluster file one error per run is miserable.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from typing import Any

from arbiter.errors import ArbiterError

# Long values (a whole mapping pasted in the wrong place) would drown the reason.
MAX_SHOWN_CHARS = 80


class InventoryError(ArbiterError):
    """The cluster file is missing or invalid; `.problems` lists every problem found."""

    status = 422
    error_type = "invalid_inventory"

    def __init__(self, problems: Iterable[str]) -> None:
        problem_list = list(problems)
        super().__init__("\n".join(problem_list), problems=problem_list)
        self.problems = problem_list


class Invalid(Exception):
    """A value failed a field check; `issues` are (key path suffix, reason) pairs.

    A list check reports one issue per bad item (suffix `[2]`), a scalar check a single
    issue with an empty suffix.
    """

    def __init__(self, reason: str, *, suffix: str = "") -> None:
        super().__init__(reason)
        self.issues: list[tuple[str, str]] = [(suffix, reason)]

    @classmethod
    def many(cls, issues: list[tuple[str, str]]) -> Invalid:
        error = cls(issues[0][1], suffix=issues[0][0])
        error.issues = issues
        return error


def show(value: Any) -> str:
    """Render a value as in the file: strings in double quotes, the rest JSON-like."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > MAX_SHOWN_CHARS:
        text = text[: MAX_SHOWN_CHARS - 3] + "..."
    return text


def must(expectation: str, value: Any) -> Invalid:
    """`must be X, got <value>`: the usual shape of a field problem."""
    return Invalid(f"{expectation}, got {show(value)}")


def unknown_key_reason(key: Any, allowed: Iterable[str]) -> str:
    """`unknown key`, plus the closest allowed key when the typo is obvious."""
    matches = difflib.get_close_matches(str(key), list(allowed), n=1)
    if matches:
        return f'unknown key (did you mean "{matches[0]}"?)'
    return "unknown key"


def child(key_path: str, key: Any) -> str:
    """The key path of `key` inside the mapping at `key_path` (empty at top level)."""
    return f"{key_path}.{key}" if key_path else str(key)


class Problems:
    """Collects every problem of one file, each prefixed with the file as given."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.messages: list[str] = []

    def add(self, key_path: str, reason: str) -> None:
        """Record one problem; an empty key path means the file as a whole."""
        where = f"{self.source}: {key_path}" if key_path else self.source
        self.messages.append(f"{where}: {reason}")

    def add_invalid(self, key_path: str, error: Invalid) -> None:
        for suffix, reason in error.issues:
            self.add(f"{key_path}{suffix}", reason)

    def __len__(self) -> int:
        return len(self.messages)

    def raise_if_any(self) -> None:
        if self.messages:
            raise InventoryError(self.messages)
