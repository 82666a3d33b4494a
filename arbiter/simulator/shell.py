"""The part of `sh -c` a simulated host needs: quoting, `;`, `&&` and a few builtins.

A real sshd hands the exec request's command string to the user's shell. Arbiter
builds every command as an argv list joined with `shlex.join`, so the simulator
only has to undo that quoting exactly. Everything else a shell could do with the
string (pipes, redirections, expansions, globs, assignments) is refused loudly
instead of approximated: an injected token must show up as an error, never run.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

UNSUPPORTED_STATUS = 2
NOT_FOUND_STATUS = 127
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
# Unquoted characters that would make a real shell do something other than build words.
_REFUSED = {
    "|": "'|' (pipelines and '||' are not simulated)",
    "<": "'<' (redirections are not simulated)",
    ">": "'>' (redirections are not simulated)",
    "(": "'(' (subshells are not simulated)",
    ")": "')' (subshells are not simulated)",
    "`": "'`' (command substitution is not simulated)",
    "$": "'$' (parameter expansion and command substitution are not simulated)",
    "*": "'*' (globs are not simulated)",
    "?": "'?' (globs are not simulated)",
    "[": "'[' (globs and the '[' command are not simulated)",
}
_RESERVED_WORDS = {
    "{",
    "}",
    "!",
    "if",
    "then",
    "else",
    "elif",
    "fi",
    "for",
    "while",
    "until",
    "do",
    "done",
    "case",
    "esac",
    "function",
}


class ShellUnsupported(Exception):
    """The script uses shell syntax the simulator deliberately refuses."""


class ShellSyntaxError(Exception):
    """The script is not valid shell at all (dash would say `Syntax error: ...`)."""


@dataclass(frozen=True)
class SimpleCommand:
    """One argv; `connector` is how it joins the previous command (`;` or `&&`)."""

    argv: list[str]
    connector: Literal[";", "&&"] = ";"


@dataclass
class _Word:
    chars: list[str] = field(default_factory=list)
    quoted: list[bool] = field(default_factory=list)

    def add(self, text: str, quoted: bool) -> None:
        self.chars.extend(text)
        self.quoted.extend([quoted] * len(text))

    @property
    def text(self) -> str:
        return "".join(self.chars)

    @property
    def any_quoted(self) -> bool:
        return any(self.quoted)


class _Parser:
    """A single left-to-right scan with POSIX quoting rules (dash's, not bash's)."""

    def __init__(self, script: str) -> None:
        self.s = script
        self.i = 0
        self.commands: list[SimpleCommand] = []
        self.words: list[_Word] = []
        self.word: _Word | None = None
        self.connector: Literal[";", "&&"] = ";"
        self.awaiting_command = False  # after `&&` a command must follow

    def parse(self) -> list[SimpleCommand]:
        while self.i < len(self.s):
            self.step(self.s[self.i])
        self.end_word()
        if self.words:
            self.end_command(";")
        elif self.awaiting_command:
            raise ShellSyntaxError("end of file unexpected")
        return self.commands

    def step(self, c: str) -> None:
        s, i = self.s, self.i
        if c in " \t":
            self.end_word()
        elif c == "\n":
            self.end_word()
            if self.words:
                self.end_command(";")
        elif c == "\\":
            if s.startswith("\\\n", i):  # line continuation: both characters vanish
                self.i += 2
                return
            nxt = s[i + 1] if i + 1 < len(s) else "\\"
            self.current().add(nxt, quoted=True)
            self.i += 2
            return
        elif c == "'":
            end = s.find("'", i + 1)
            if end < 0:
                raise ShellSyntaxError("Unterminated quoted string")
            self.current().add(s[i + 1 : end], quoted=True)
            self.i = end + 1
            return
        elif c == '"':
            self.i = self.double_quoted(i + 1)
            return
        elif c == ";":
            if s.startswith(";;", i):
                raise ShellSyntaxError('";;" unexpected')
            self.end_word()
            self.end_command(";")
        elif c == "&":
            if not s.startswith("&&", i):
                raise ShellUnsupported("'&' (background jobs are not simulated)")
            self.end_word()
            self.end_command("&&")
            self.i += 2
            return
        elif c in _REFUSED:
            raise ShellUnsupported(_REFUSED[c])
        elif c in "~#" and self.word is None:
            what = "tilde expansion" if c == "~" else "comments"
            raise ShellUnsupported(f"'{c}' at the start of a word ({what} are not simulated)")
        else:
            self.current().add(c, quoted=False)
        self.i += 1

    def double_quoted(self, i: int) -> int:
        """Consume a "..." string starting after the quote; return the index after it."""
        word = self.current()
        s = self.s
        while i < len(s):
            c = s[i]
            if c == '"':
                return i + 1
            if c == "\\" and i + 1 < len(s) and s[i + 1] in '$`"\\\n':
                if s[i + 1] != "\n":
                    word.add(s[i + 1], quoted=True)
                i += 2
                continue
            if c in "$`":
                raise ShellUnsupported(f"'{c}' inside double quotes (expansions are not simulated)")
            word.add(c, quoted=True)
            i += 1
        raise ShellSyntaxError("Unterminated quoted string")

    def current(self) -> _Word:
        if self.word is None:
            self.word = _Word()
        return self.word

    def end_word(self) -> None:
        if self.word is None:
            return
        word, self.word = self.word, None
        # Reserved words only count where a command name would be (`echo if` is fine).
        if not self.words and not word.any_quoted and word.text in _RESERVED_WORDS:
            raise ShellUnsupported(f"'{word.text}' (compound commands are not simulated)")
        self.words.append(word)

    def end_command(self, op: Literal[";", "&&"]) -> None:
        if not self.words:
            raise ShellSyntaxError(f'"{op}" unexpected')
        first = self.words[0]
        match = _ASSIGNMENT.match(first.text)
        if match and not any(first.quoted[: match.end()]):
            raise ShellUnsupported(f"'{match.group()}' (variable assignments are not simulated)")
        # `''` is a real, empty argument; the _Word exists even with no characters.
        self.commands.append(SimpleCommand([w.text for w in self.words], self.connector))
        self.words = []
        self.connector = op
        self.awaiting_command = op == "&&"


def parse(script: str) -> list[SimpleCommand]:
    """Split a command string into simple commands, exactly as `sh -c` would quote them."""
    return _Parser(script).parse()


class Io(Protocol):
    """Where a command's output goes and what it was given (SSH channel or a buffer)."""

    env: Mapping[str, str]

    def out(self, text: str) -> None: ...

    def err(self, text: str) -> None: ...

    async def drain(self) -> None: ...

    async def read_stdin(self) -> str: ...

    def closed(self) -> bool: ...


class Files(Protocol):
    """The host's view of its (simulated) file system."""

    def kind(self, path: str) -> Literal["file", "dir"] | None: ...

    def read_text(self, path: str) -> str: ...

    def writable(self, path: str) -> bool: ...


Handler = Callable[[list[str], Io], Awaitable[int]]


class _ExitScript(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Shell:
    """Runs a script: builtins here, everything else through `commands` (name -> handler)."""

    def __init__(self, commands: Mapping[str, Handler], files: Files, io: Io) -> None:
        self.commands = commands
        self.files = files
        self.io = io
        self.builtins: dict[str, Handler] = {
            "echo": self.echo,
            "true": self.true,
            "false": self.false,
            "test": self.test,
            "cat": self.cat,
            "sh": self.sh,
            "bash": self.sh,
            "exit": self.exit,
            "printenv": self.printenv,
        }

    async def run(self, script: str) -> int:
        try:
            return await self._run(script)
        except _ExitScript as done:
            return done.status

    async def _run(self, script: str) -> int:
        try:
            commands = parse(script)
        except ShellUnsupported as error:
            self.io.err(f"sim: unsupported shell syntax: {error}\n")
            return UNSUPPORTED_STATUS
        except ShellSyntaxError as error:
            self.io.err(f"sh: 1: Syntax error: {error}\n")
            return UNSUPPORTED_STATUS
        status = 0
        for command in commands:
            if command.connector == "&&" and status != 0:
                continue  # `a && b` skips b; a later `;` runs again
            status = await self.run_argv(command.argv)
        return status

    async def run_argv(self, argv: list[str]) -> int:
        name = argv[0]
        handler = self.builtins.get(name) or self.commands.get(name)
        if handler is None:
            self.io.err(f"sh: 1: {name}: not found\n")
            return NOT_FOUND_STATUS
        status = await handler(argv, self.io)
        await self.io.drain()
        return status

    async def echo(self, argv: list[str], io: Io) -> int:
        args = argv[1:]
        newline = True
        if args[:1] == ["-n"]:
            newline, args = False, args[1:]
        io.out(" ".join(args) + ("\n" if newline else ""))
        return 0

    async def true(self, argv: list[str], io: Io) -> int:
        return 0

    async def false(self, argv: list[str], io: Io) -> int:
        return 1

    async def exit(self, argv: list[str], io: Io) -> int:
        status = int(argv[1]) if len(argv) > 1 and argv[1].isdigit() else 0
        raise _ExitScript(status & 0xFF)

    async def test(self, argv: list[str], io: Io) -> int:
        args = argv[1:]
        if len(args) == 2 and args[0] == "-w":
            return 0 if self.files.writable(args[1]) else 1
        if len(args) == 2 and args[0] in ("-e", "-d", "-f"):
            kind = self.files.kind(args[1])
            wanted = {"-e": ("file", "dir"), "-d": ("dir",), "-f": ("file",)}[args[0]]
            return 0 if kind in wanted else 1
        if len(args) == 1:
            return 0 if args[0] else 1
        if not args:
            return 1
        io.err(f"sim: test: only -e/-d/-f/-w PATH are simulated, got: {' '.join(args)}\n")
        return UNSUPPORTED_STATUS

    async def printenv(self, argv: list[str], io: Io) -> int:
        """GNU printenv: all `NAME=value` lines, or the values of the names given; exit 1
        when one of them is not set (coreutils printenv.c)."""
        if len(argv) == 1:
            io.out("".join(f"{k}={v}\n" for k, v in io.env.items()))
            return 0
        status = 0
        for name in argv[1:]:
            if name.startswith("-"):
                io.err(f"printenv: invalid option -- '{name.lstrip('-')[:1]}'\n")
                return 2
            if name in io.env:
                io.out(io.env[name] + "\n")
            else:
                status = 1
        return status

    async def cat(self, argv: list[str], io: Io) -> int:
        if len(argv) == 1:
            io.out(await io.read_stdin())
            return 0
        status = 0
        for path in argv[1:]:
            try:
                io.out(self.files.read_text(path))
            except IsADirectoryError:
                io.err(f"cat: {path}: Is a directory\n")
                status = 1
            except (FileNotFoundError, NotADirectoryError):
                io.err(f"cat: {path}: No such file or directory\n")
                status = 1
        return status

    async def sh(self, argv: list[str], io: Io) -> int:
        if len(argv) < 2 or argv[1] != "-c":
            io.err(f"sim: {argv[0]}: only `{argv[0]} -c SCRIPT` is simulated\n")
            return UNSUPPORTED_STATUS
        if len(argv) < 3:
            io.err(f"{argv[0]}: 0: -c requires an argument\n")
            return UNSUPPORTED_STATUS
        # Extra words after the script are $0, $1 ... which the simulator never expands.
        return await Shell(self.commands, self.files, io).run(argv[2])


class BufferIo:
    """An `Io` that collects output in memory (unit tests, the control API)."""

    def __init__(self, env: Mapping[str, str] | None = None, stdin: str = "") -> None:
        self.env: Mapping[str, str] = dict(env or {})
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._stdin = stdin

    def out(self, text: str) -> None:
        self.stdout.append(text)

    def err(self, text: str) -> None:
        self.stderr.append(text)

    async def drain(self) -> None:
        return None

    async def read_stdin(self) -> str:
        text, self._stdin = self._stdin, ""
        return text

    def closed(self) -> bool:
        return False

    @property
    def stdout_text(self) -> str:
        return "".join(self.stdout)

    @property
    def stderr_text(self) -> str:
        return "".join(self.stderr)
