"""Command-line flags parsed the way Go's spf13/pflag does it (the docker CLI's parser).

The simulated `docker` must accept exactly what the real one accepts and reject the
rest with the same words, so this follows pflag's rules rather than argparse's:
`--name value` and `--name=value`, `-d`, `-dp 80:80`, `-e=K=V`, a value is taken
even when it starts with `-`, no abbreviations, `--` ends the flags, and with
interspersing off (docker run) the first argument ends them too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

FlagKind = Literal["bool", "string", "list", "int", "duration"]
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_DURATION = re.compile(r"[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+")


class FlagError(Exception):
    """A parse error worded like pflag's (`unknown flag: --x`)."""


@dataclass(frozen=True)
class Flag:
    """One flag: its long name, optional one-letter shorthand, and value kind."""

    name: str
    short: str | None = None
    kind: FlagKind = "string"

    @property
    def display(self) -> str:
        return f"-{self.short}, --{self.name}" if self.short else f"--{self.name}"


@dataclass
class Parsed:
    """Flag values in the order given (a bool is "true"/"false"), then the arguments."""

    values: dict[str, list[str]] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)

    def last(self, name: str, default: str | None = None) -> str | None:
        found = self.values.get(name)
        return found[-1] if found else default

    def all(self, name: str) -> list[str]:
        return list(self.values.get(name, []))

    def flag(self, name: str) -> bool:
        return self.last(name) == "true"

    def given(self, name: str) -> bool:
        return name in self.values


def parse(argv: list[str], flags: list[Flag], interspersed: bool = True) -> Parsed:
    """Parse `argv` (without the command words) against `flags`."""
    by_name = {f.name: f for f in flags}
    by_short = {f.short: f for f in flags if f.short}
    parsed = Parsed()
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            parsed.args.extend(argv[i:])
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            spec = by_name.get(name)
            if spec is None:
                raise FlagError(f"unknown flag: --{name}")
            if spec.kind == "bool":
                _store(parsed, spec, value if eq else "true")
            elif eq:
                _store(parsed, spec, value)
            elif i < len(argv):
                _store(parsed, spec, argv[i])
                i += 1
            else:
                raise FlagError(f"flag needs an argument: --{name}")
        elif arg.startswith("-") and len(arg) > 1:
            i = _shorthands(arg, argv, i, by_short, parsed)
        else:
            if not interspersed:
                parsed.args.append(arg)
                parsed.args.extend(argv[i:])
                break
            parsed.args.append(arg)
    return parsed


def _shorthands(arg: str, argv: list[str], i: int, by_short: dict, parsed: Parsed) -> int:
    """A `-abc` group: bools set in turn; a value flag takes the rest, or the next arg."""
    letters = arg[1:]
    j = 0
    while j < len(letters):
        letter = letters[j]
        spec = by_short.get(letter)
        if spec is None:
            raise FlagError(f"unknown shorthand flag: '{letter}' in {arg}")
        rest = letters[j + 1 :]
        if spec.kind == "bool":
            if rest.startswith("="):
                _store(parsed, spec, rest[1:])
                return i
            _store(parsed, spec, "true")
            j += 1
            continue
        if rest:
            _store(parsed, spec, rest[1:] if rest.startswith("=") else rest)
            return i
        if i < len(argv):
            _store(parsed, spec, argv[i])
            return i + 1
        raise FlagError(f"flag needs an argument: '{letter}' in {arg}")
    return i


def _store(parsed: Parsed, spec: Flag, value: str) -> None:
    if spec.kind == "bool":
        if value not in _TRUE | _FALSE:
            raise FlagError(_invalid(spec, value, "strconv.ParseBool", "invalid syntax"))
        value = "true" if value in _TRUE else "false"
    elif spec.kind == "int":
        try:
            int(value, 10)
        except ValueError:
            raise FlagError(_invalid(spec, value, "strconv.ParseInt", "invalid syntax")) from None
    elif spec.kind == "duration" and not _is_duration(value):
        raise FlagError(
            f'invalid argument "{value}" for "{spec.display}" flag: '
            f'time: invalid duration "{value}"'
        )
    parsed.values.setdefault(spec.name, []).append(value)


def _invalid(spec: Flag, value: str, func: str, why: str) -> str:
    return f'invalid argument "{value}" for "{spec.display}" flag: {func}: parsing "{value}": {why}'


def _is_duration(value: str) -> bool:
    """Go's time.ParseDuration shape: a sequence of number+unit, or a bare 0."""
    return value == "0" or _DURATION.fullmatch(value) is not None
