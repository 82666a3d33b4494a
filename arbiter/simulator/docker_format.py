"""How the docker CLI prints things: Go templates (a subset), tables, durations, JSON.

`--format` strings are Go text/template. The subset here covers what scripts use with
`docker ps` / `docker inspect`: `{{.Field}}`, `{{.A.B}}`, `{{json .}}`, `{{json .X}}`,
`{{upper .X}}`, `{{lower .X}}`, `{{index .X "key"}}`, `{{join .X ","}}` and literal
text. Anything else fails loudly rather than printing something plausible but wrong.
"""

from __future__ import annotations

import json
import re
import shlex
from datetime import UTC, datetime
from typing import Any

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_TABLE_HEADERS = {
    "ID": "CONTAINER ID",
    "Names": "NAMES",
    "Image": "IMAGE",
    "Command": "COMMAND",
    "CreatedAt": "CREATED AT",
    "RunningFor": "CREATED",
    "Ports": "PORTS",
    "State": "STATE",
    "Status": "STATUS",
    "Size": "SIZE",
    "Labels": "LABELS",
    "Mounts": "MOUNTS",
    "Networks": "NETWORKS",
    "LocalVolumes": "LOCAL VOLUMES",
}
DEFAULT_PS_TABLE = (
    "table {{.ID}}\\t{{.Image}}\\t{{.Command}}\\t{{.RunningFor}}"
    "\\t{{.Status}}\\t{{.Ports}}\\t{{.Names}}"
)


class TemplateError(Exception):
    """The template is outside the supported subset or names a missing field."""


def render(template: str, data: Any, type_name: str = "formatter.ContainerContext") -> str:
    """Execute `template` against `data` (dicts stand in for Go structs)."""
    out: list[str] = []
    pos = 0
    for match in _ACTION.finditer(template):
        text = template[pos : match.start()]
        if match.group(1):
            text = text.rstrip()
        out.append(text)
        out.append(_action(match.group(2), data, match.start(), type_name))
        pos = match.end()
        if match.group(3):
            rest = template[pos:]
            pos += len(rest) - len(rest.lstrip())
    if "{{" in template[pos:]:
        raise TemplateError(f'template: :1: unclosed action in "{template}"')
    out.append(template[pos:])
    return "".join(out)


def _action(expr: str, data: Any, at: int, type_name: str) -> str:
    try:
        words = shlex.split(expr) if expr else []
    except ValueError as error:
        raise TemplateError(f"template: :1: {error}") from None
    if not words:
        raise TemplateError("template: :1: missing value for command")
    func, args = (words[0], words[1:]) if not words[0].startswith(".") else ("", words)
    values = [_lookup(arg, data, at, type_name) if arg.startswith(".") else arg for arg in args]
    if func == "":
        if len(values) != 1:
            raise TemplateError(f"template: :1: can't give argument to non-function {args[0]}")
        return go_string(values[0])
    if func == "json" and len(values) == 1:
        return json.dumps(values[0], separators=(",", ":"), ensure_ascii=False)
    if func in ("upper", "lower") and len(values) == 1:
        text = go_string(values[0])
        return text.upper() if func == "upper" else text.lower()
    if func == "index" and len(values) == 2 and isinstance(values[0], dict):
        return go_string(values[0].get(values[1], ""))
    if func == "join" and len(values) == 2 and isinstance(values[0], list):
        return str(values[1]).join(go_string(v) for v in values[0])
    raise TemplateError(f'sim: template function "{func}" is not simulated (in {{{{{expr}}}}})')


def _lookup(path: str, data: Any, at: int, type_name: str) -> Any:
    value = data
    if path == ".":
        return value
    for part in path.strip(".").split("."):
        if not isinstance(value, dict) or part not in value:
            raise TemplateError(
                f'template: :1:{at + 2}: executing "" at <{path}>: '
                f"can't evaluate field {part} in type {type_name}"
            )
        value = value[part]
    return value


def go_string(value: Any) -> str:
    """fmt.Sprint's rendering: true/false, <nil>, map[k:v], [a b]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_string(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, list):
        return "[" + " ".join(go_string(v) for v in value) + "]"
    return str(value)


def table_header(template: str) -> str:
    """The header line of a `table` format: each field replaced by its column title."""

    def title(match: re.Match[str]) -> str:
        field = match.group(2).strip().lstrip(".")
        return _TABLE_HEADERS.get(field, field.upper())

    return _ACTION.sub(title, template)


def tabwriter(lines: list[str]) -> str:
    """Go's tabwriter(minwidth=10, padding=3) over tab-separated cells, as docker uses it."""
    rows = [line.split("\t") for line in lines]
    columns = max((len(r) for r in rows), default=0)
    widths = [max([len(r[i]) + 3 for r in rows if len(r) > i + 1] + [10]) for i in range(columns)]
    rendered = []
    for row in rows:
        cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        rendered.append("".join(cells))
    return "".join(line + "\n" for line in rendered)


def human_duration(seconds: float) -> str:
    """go-units HumanDuration, as in `Up 5 seconds` and `Exited (0) 2 minutes ago`."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def rfc3339(timestamp: float | None) -> str:
    """Docker's timestamps: RFC 3339 with nanoseconds; the zero time when unset."""
    if timestamp is None:
        return "0001-01-01T00:00:00Z"
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + f"{int(timestamp * 1e9) % 1000:03d}Z"


def created_at(timestamp: float) -> str:
    """`docker ps` CreatedAt: Go's time.String() of a UTC time."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


def ps_format(template: str) -> str:
    """Docker's pre-formatting: `table` prefix removed, literal \\t and \\n unescaped."""
    body = template[len("table") :] if template.startswith("table") else template
    return body.strip(" ").replace("\\t", "\t").replace("\\n", "\n")
