"""Reading the shipping files as tests need them: the StartOS package's TypeScript, the
Dockerfile, the systemd units and environment files.

The TypeScript is read, not executed (except `cluster.ts`, see test_configure_output):
the helpers find a declaration by name and take the object literal after it apart by
brackets, which is enough for the plain constants and tables the package keeps.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STARTOS = ROOT / "startos"
PACKAGE_TS = STARTOS / "startos"
DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"

_OPENERS = {"{": "}", "[": "]", "(": ")"}


def ts_source(relative: str) -> str:
    """A file under startos/startos/, without its comments."""
    return strip_comments((PACKAGE_TS / relative).read_text())


def strip_comments(text: str) -> str:
    """TypeScript without `//` and `/* */` comments (strings are kept intact)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char in "'\"`":
            end = _string_end(text, i)
            out.append(text[i:end])
            i = end
        elif text.startswith("//", i):
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _string_end(text: str, start: int) -> int:
    quote = text[start]
    i = start + 1
    while text[i] != quote:
        i += 2 if text[i] == "\\" else 1
    return i + 1


def balanced(text: str, start: int) -> str:
    """The bracketed expression that opens at `text[start]`, brackets included."""
    closer = _OPENERS[text[start]]
    stack = [closer]
    i = start + 1
    while stack:
        char = text[i]
        if char in "'\"`":
            i = _string_end(text, i)
            continue
        if char in _OPENERS:
            stack.append(_OPENERS[char])
        elif char == stack[-1]:
            stack.pop()
        i += 1
    return text[start:i]


def after(text: str, marker: str, opener: str = "{") -> str:
    """The first bracketed expression opened by `opener` after `marker`."""
    position = text.index(marker)
    return balanced(text, text.index(opener, position + len(marker)))


def top_level_entries(literal: str) -> dict[str, str]:
    """`{ key: value, ... }` -> {key: value source}, for the outermost level only."""
    body = literal.strip()[1:-1]
    entries: dict[str, str] = {}
    i = 0
    while i < len(body):
        match = re.compile(r"\s*(?:'([^']+)'|([A-Za-z_$][\w$]*))\s*:").match(body, i)
        if not match:
            i += 1
            continue
        key = match.group(1) or match.group(2)
        j = match.end()
        start = j
        while j < len(body) and body[j] != ",":
            if body[j] in "'\"`":
                j = _string_end(body, j)
            elif body[j] in _OPENERS:
                j += len(balanced(body, j))
            else:
                j += 1
        entries[key] = body[start:j].strip()
        i = j + 1
    return entries


def ts_const(relative: str, name: str) -> str:
    """The source of `export const name = <value>` (a literal) in a package file."""
    text = ts_source(relative)
    match = re.search(rf"\bconst {name}\s*=\s*", text)
    assert match, f"{relative} declares no const {name}"
    start = match.end()
    if text[start] in _OPENERS:
        return balanced(text, start)
    return re.match(r"[^\n;]+", text[start:]).group(0).strip()


def ts_string(literal: str) -> str:
    match = re.fullmatch(r"'([^']*)'|\"([^\"]*)\"", literal.strip())
    assert match, f"not a string literal: {literal}"
    return match.group(1) if match.group(1) is not None else match.group(2)


# --- Dockerfile ---------------------------------------------------------------------
@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, keyword: str) -> list[str]:
        return [value for kw, value in self.instructions if kw == keyword]


def dockerfile_stages(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "FROM":
            parts = value.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif stages:
            stages[-1].instructions.append((keyword, value))
        elif keyword == "ARG":
            key, _, default = value.partition("=")
            args[key] = default
    return args, stages


def env_pairs(value: str) -> dict[str, str]:
    """An ENV instruction's `KEY=value KEY2=value2` pairs."""
    return dict(item.split("=", 1) for item in shlex.split(value))


# --- systemd units and environment files ----------------------------------------------
def unit_file(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values...]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def env_file(path: Path, *, include_commented: bool = False) -> dict[str, str]:
    """KEY=value lines of an environment file; `# KEY=value` ones too if asked."""
    pattern = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = pattern.match(line.strip())
        if match and (include_commented or not match.group(1)):
            values[match.group(2)] = match.group(3)
    return values


def settings_read_names() -> set[str]:
    """Every environment variable arbiter/settings.py reads (with its `_FILE` twin)."""
    text = (ROOT / "arbiter" / "settings.py").read_text()
    return set(re.findall(r"\benv(?:_bool|_int|_float|_list)?\(\s*\"([A-Z][A-Z0-9_]*)\"", text))
