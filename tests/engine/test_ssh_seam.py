"""The SSH seam against the simulator's real asyncssh servers."""

import asyncio
from pathlib import Path

import asyncssh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arbiter.engine.ssh import join_argv
from arbiter.errors import (
    CommandFailed,
    CommandTimeout,
    HostKeyRejected,
    HostUnreachable,
    SshAuthFailed,
)
from tests.sim_fixtures import target_for


async def test_it_runs_a_command_and_returns_its_output(sim, pool):
    result = await pool.run(target_for(sim, "sim-a"), ["nvidia-smi", "-L"], timeout=5)
    assert result.exit_status == 0
    assert "NVIDIA RTX 6000 Ada Generation" in result.stdout


async def test_it_keeps_one_connection_per_host(sim, pool):
    target = target_for(sim, "sim-a")
    await pool.run(target, ["true"], timeout=5)
    first = pool._connections["sim-a"][1]
    await pool.run(target, ["true"], timeout=5)
    assert pool._connections["sim-a"][1] is first


async def test_it_maps_a_non_zero_exit_to_command_failed(sim, pool):
    argv = ["nvidia-smi", "--query-gpu=bogus", "--format=csv"]
    with pytest.raises(CommandFailed) as failure:
        await pool.run(target_for(sim, "sim-a"), argv, timeout=5)
    assert failure.value.exit_status == 2
    assert 'Field "bogus" is not a valid field to query.' in failure.value.stderr_tail
    assert failure.value.argv == argv


async def test_it_returns_the_exit_status_when_not_checking(sim, pool):
    result = await pool.run(target_for(sim, "sim-a"), ["no-such-tool"], timeout=5, check=False)
    assert result.exit_status == 127
    assert "not found" in result.stderr


async def test_it_times_out(sim, pool):
    with pytest.raises(CommandTimeout):
        await pool.run(target_for(sim, "sim-a"), ["sleep", "5"], timeout=0.3)
    # The connection stays usable after a timed-out command.
    assert (await pool.run(target_for(sim, "sim-a"), ["true"], timeout=5)).exit_status == 0


async def test_it_streams_lines_in_order_as_they_arrive(sim, pool):
    target = target_for(sim, "sim-a")
    run_argv = ["docker", "run", "-d", "--name", "m1", "-p", "18123:8000",
                "vllm/vllm-openai:latest", "--model", "org/m1"]  # fmt: skip
    await pool.run(target, run_argv, timeout=10)
    loop = asyncio.get_running_loop()
    lines, arrivals = [], []
    async for line in pool.stream(target, ["docker", "logs", "-f", "m1"], timeout=15):
        lines.append(line)
        arrivals.append(loop.time())
        if "Application startup complete" in line:
            break
    assert len(lines) >= 4
    # In order, and spread over the simulated start-up rather than delivered in one lump.
    host = sim.hosts["sim-a"]
    stdout_log, _stderr_log = host.daemon.log_paths(host.container("m1"))
    log = stdout_log.read_text().splitlines()
    assert lines == log[: len(lines)]
    assert arrivals[-1] - arrivals[0] > 0.2


async def test_it_streams_the_exit_failure_after_the_lines(sim, pool):
    target = target_for(sim, "sim-a")
    lines = []
    with pytest.raises(CommandFailed) as failure:
        async for line in pool.stream(target, ["docker", "logs", "no-such"], timeout=5):
            lines.append(line)
    assert lines == []
    assert "No such container: no-such" in failure.value.stderr_tail


async def test_it_times_out_a_stream(sim, pool):
    target = target_for(sim, "sim-a")
    with pytest.raises(CommandTimeout):
        async for _line in pool.stream(target, ["sleep", "5"], timeout=0.3):
            pass


async def test_it_refuses_an_unknown_host_key(sim, pool):
    target = target_for(sim, "sim-b", known_hosts_file="")
    with pytest.raises(HostKeyRejected) as rejected:
        await pool.run(target, ["true"], timeout=5)
    expected = asyncssh.import_public_key(sim.hosts["sim-b"].host_key_line()).get_fingerprint()
    assert rejected.value.fingerprint == expected
    assert rejected.value.changed is False
    assert expected in rejected.value.message
    assert "manage.py trust_host sim-b" in rejected.value.message
    assert sim.hosts["sim-b"].commands == []  # nothing ran


async def test_it_refuses_a_changed_host_key(sim, pool):
    target = target_for(sim, "sim-b")  # trusts the key written before the rotation
    old_known_hosts = Path(target.known_hosts_file).read_text()
    await sim.hosts["sim-b"].rotate_host_key()
    Path(target.known_hosts_file).write_text(old_known_hosts)
    with pytest.raises(HostKeyRejected) as rejected:
        await pool.run(target, ["true"], timeout=5)
    assert rejected.value.changed is True
    assert "HOST KEY CHANGED" in rejected.value.message
    assert "--replace" in rejected.value.message


async def test_it_trusts_keys_recorded_by_trust_host(sim, pool):
    key = sim.hosts["sim-b"].host_key_line()
    target = target_for(sim, "sim-b", known_hosts_file="", trusted_keys=(key,))
    assert (await pool.run(target, ["true"], timeout=5)).exit_status == 0


async def test_it_reports_an_unreachable_host_and_reconnects(sim, pool):
    target = target_for(sim, "sim-a")
    await pool.run(target, ["true"], timeout=5)
    await sim.hosts["sim-a"].go_down()
    with pytest.raises(HostUnreachable):
        await pool.run(target, ["true"], timeout=5)
    await sim.hosts["sim-a"].come_up()
    assert (await pool.run(target, ["true"], timeout=5)).exit_status == 0


async def test_it_reports_a_refused_login(sim, pool, tmp_path):
    stranger = tmp_path / "stranger_key"
    stranger.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    stranger.chmod(0o600)
    with pytest.raises(SshAuthFailed):
        await pool.run(target_for(sim, "sim-a", key_path=str(stranger)), ["true"], timeout=5)


HOSTILE_ARGUMENTS = [
    "; rm -rf /",
    "a | b",
    "x & y",
    "$(reboot)",
    "`id`",
    "it's",
    'say "hi"',
    "line1\nline2",
    "two words",
    "-rf",
    "--gpus=all",
    "$HOME",
    "*",
    "",
    "back\\slash",
    "tab\there",
]


async def test_it_delivers_hostile_arguments_as_exactly_one_argv(sim, pool):
    argv = ["echo", *HOSTILE_ARGUMENTS]
    result = await pool.run(target_for(sim, "sim-a"), argv, timeout=5)
    assert sim.hosts["sim-a"].commands[-1].argvs == [argv]
    assert result.stdout == " ".join(HOSTILE_ARGUMENTS) + "\n"


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
# Any text that can travel: no NUL, no lone surrogates (refused by join_argv, below).
@given(
    st.lists(
        st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=12),
        max_size=5,
    )
)
async def test_it_delivers_any_text_argv_unchanged(sim, pool, arguments):
    argv = ["echo", *arguments]
    await pool.run(target_for(sim, "sim-a"), argv, timeout=5)
    assert sim.hosts["sim-a"].commands[-1].argvs == [argv]


@pytest.mark.parametrize(
    "argv",
    [[], "echo hi", ["echo", "nul\x00byte"], ["echo", 5], ["echo", None], ["echo", "\ud99b"]],
)
def test_it_refuses_argv_it_cannot_quote(argv):
    with pytest.raises(ValueError):
        join_argv(argv)


async def test_it_streams_both_streams_labelled(sim, pool):
    argv = ["nvidia-smi", "--query-gpu=bogus", "--format=csv"]
    lines = [item async for item in pool.stream_both(target_for(sim, "sim-a"), argv, check=False)]
    assert ("stderr", 'Field "bogus" is not a valid field to query.') in lines
    assert all(stream in ("stdout", "stderr") for stream, _ in lines)


async def test_it_keeps_stderr_out_of_the_stdout_stream(sim, pool):
    argv = ["nvidia-smi", "--query-gpu=bogus", "--format=csv"]
    lines = [line async for line in pool.stream(target_for(sim, "sim-a"), argv, check=False)]
    assert not any("bogus" in line for line in lines)
