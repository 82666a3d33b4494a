"""The simulated hosts' `sh -c`: real quoting rules, `;` and `&&`, and nothing else."""

from __future__ import annotations

import shlex
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arbiter.simulator.shell import (
    BufferIo,
    Shell,
    ShellSyntaxError,
    ShellUnsupported,
    SimpleCommand,
    parse,
)
from tests.simulator.client import run

NASTY_ARGV = [
    "echo",
    "a; rm -rf /",
    "b | cat",
    "c & d",
    "$(id)",
    "`id`",
    "it's",
    'say "hi"',
    "line1\nline2",
    "back\\slash",
    "  spaced  ",
    "--leading-dash",
    "-e",
    "",
    "$HOME",
    "*",
    "~",
    "#not-a-comment",
    "FOO=bar",
    "&&",
    "{}",
    "if",
    "{",
    "!",
]


class FakeFiles:
    """Two paths: /models (a directory) and /models/a.bin (a file)."""

    def kind(self, path: str) -> Literal["file", "dir"] | None:
        return {"/models": "dir", "/models/a.bin": "file"}.get(path)  # type: ignore[return-value]

    def read_text(self, path: str) -> str:
        if path == "/models/a.bin":
            return "weights\n"
        if path == "/models":
            raise IsADirectoryError(path)
        raise FileNotFoundError(path)


async def sh(script: str) -> tuple[int, str, str]:
    io = BufferIo()
    status = await Shell({}, FakeFiles(), io).run(script)
    return status, io.stdout_text, io.stderr_text


def argvs(script: str) -> list[list[str]]:
    return [command.argv for command in parse(script)]


def test_it_splits_words_on_blanks() -> None:
    assert argvs("docker  ps\t-a") == [["docker", "ps", "-a"]]


def test_it_keeps_single_quoted_text_literal() -> None:
    assert argvs("echo 'a \"b\" \\n $x `y`'") == [["echo", 'a "b" \\n $x `y`']]


def test_it_unescapes_only_the_special_characters_in_double_quotes() -> None:
    assert argvs(r'echo "a\"b\\c\$d\e"') == [["echo", 'a"b\\c$d\\e']]


def test_it_treats_a_backslash_outside_quotes_as_an_escape() -> None:
    assert argvs(r"echo a\ b \; \|") == [["echo", "a b", ";", "|"]]


def test_it_keeps_newlines_inside_quotes() -> None:
    assert argvs("echo 'one\ntwo' \"three\nfour\"") == [["echo", "one\ntwo", "three\nfour"]]


def test_it_joins_adjacent_quoted_parts_into_one_word() -> None:
    assert argvs("""echo a'b'"c"d ''""") == [["echo", "abcd", ""]]


def test_it_splits_commands_on_semicolons_newlines_and_and_and() -> None:
    assert parse("a 1; b 2\nc 3 && d 4") == [
        SimpleCommand(["a", "1"], ";"),
        SimpleCommand(["b", "2"], ";"),
        SimpleCommand(["c", "3"], ";"),
        SimpleCommand(["d", "4"], "&&"),
    ]


def test_it_drops_a_line_continuation() -> None:
    assert argvs("docker run \\\n  -d img") == [["docker", "run", "-d", "img"]]


@pytest.mark.parametrize(
    "script",
    [
        "echo a | cat",
        "false || echo b",
        "sleep 1 &",
        "echo a > /tmp/x",
        "cat < /etc/passwd",
        "echo $(id)",
        "echo `id`",
        "echo $HOME",
        'echo "$HOME"',
        'echo "`id`"',
        "echo *",
        "ls /models/?",
        "[ -e /x ]",
        "cd ~",
        "echo a # comment",
        "HF_TOKEN=secret docker run img",
        "(echo a)",
        "{ echo a; }",
        "if true; then echo a; fi",
    ],
)
async def test_it_refuses_every_other_operator_and_expansion(script: str) -> None:
    with pytest.raises(ShellUnsupported):
        parse(script)
    status, out, err = await sh(script)
    assert (status, out) == (2, "")
    assert err.startswith("sim: unsupported shell syntax: ")


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("echo 'open", "Unterminated quoted string"),
        ('echo "open', "Unterminated quoted string"),
        ("; echo a", '";" unexpected'),
        ("echo a;; echo b", '";;" unexpected'),
        ("echo a &&", "end of file unexpected"),
    ],
)
async def test_it_reports_syntax_errors_like_dash(script: str, message: str) -> None:
    with pytest.raises(ShellSyntaxError, match=message):
        parse(script)
    assert await sh(script) == (2, "", f"sh: 1: Syntax error: {message}\n")


async def test_it_skips_and_and_after_a_failure_and_resumes_after_a_semicolon() -> None:
    status, out, _ = await sh("false && echo skipped && echo skipped2 ; echo ran && true")
    assert (status, out) == (0, "ran\n")
    assert (await sh("true && false"))[0] == 1


async def test_it_interprets_sh_dash_c_recursively() -> None:
    status, out, _ = await sh('sh -c \'echo "x  y"; sh -c "echo inner"\' && echo outer')
    assert (status, out) == (0, "x  y\ninner\nouter\n")


async def test_it_still_refuses_operators_inside_sh_dash_c() -> None:
    status, out, err = await sh("sh -c 'echo a | cat'")
    assert (status, out) == (2, "")
    assert "'|'" in err


async def test_it_has_the_builtins_echo_test_and_cat() -> None:
    assert await sh("echo -n a b") == (0, "a b", "")
    assert [
        (await sh(f"test {flag} {path}"))[0]
        for flag, path in [
            ("-e", "/models"),
            ("-d", "/models"),
            ("-f", "/models"),
            ("-f", "/models/a.bin"),
            ("-e", "/nope"),
        ]
    ] == [0, 0, 1, 0, 1]
    assert await sh("cat /models/a.bin") == (0, "weights\n", "")
    assert await sh("cat /nope") == (1, "", "cat: /nope: No such file or directory\n")


async def test_it_reports_an_unknown_command_as_not_found() -> None:
    assert await sh("nosuchtool --flag") == (127, "", "sh: 1: nosuchtool: not found\n")


def test_it_parses_a_shlex_joined_argv_back_to_itself() -> None:
    assert argvs(shlex.join(NASTY_ARGV)) == [NASTY_ARGV]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(st.characters(exclude_characters="\x00")), max_size=6))
def test_it_parses_any_shlex_joined_argv_back_to_itself(args: list[str]) -> None:
    # The command name is Arbiter's constant; everything after it may be user input.
    argv = ["docker", *args]
    assert argvs(shlex.join(argv)) == [argv]


def test_it_refuses_reserved_words_only_in_command_position() -> None:
    assert argvs("echo if then { } ! done") == [["echo", "if", "then", "{", "}", "!", "done"]]


async def test_it_receives_an_argv_over_ssh_exactly_as_sent(sim, ssh) -> None:
    conn = await ssh("sim-a")
    result = await run(conn, NASTY_ARGV)
    assert result.exit_status == 0
    assert result.stdout == " ".join(NASTY_ARGV[1:]) + "\n"
    record = sim.hosts["sim-a"].commands[-1]
    assert record.raw == shlex.join(NASTY_ARGV)
    assert record.argvs == [NASTY_ARGV]
    assert record.argv == NASTY_ARGV
    assert record.exit_status == 0


async def test_it_never_runs_an_injected_token_over_ssh(sim, ssh) -> None:
    conn = await ssh("sim-a")
    result = await conn.run("docker ps; docker ps | sh", check=False)
    assert result.exit_status == 2
    assert result.stdout == ""
    assert "unsupported shell syntax" in result.stderr
    assert sim.hosts["sim-a"].commands[-1].argvs == []
