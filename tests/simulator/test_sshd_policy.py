"""The simulated sshd says no the way OpenSSH on a stock Ubuntu/Debian host does."""

import asyncio
import json

import asyncssh
import pytest

from tests.simulator.client import run

CACHE = "/home/arbiter/.cache/huggingface/hub"


async def test_it_drops_env_outside_acceptenv_silently(sim, ssh) -> None:
    conn = await ssh("sim-a")
    sent = {"HF_TOKEN": "hf_x", "LANG": "C.UTF-8", "LC_ALL": "C", "FOO": "bar"}
    result = await run(conn, ["printenv", "HF_TOKEN"], env=sent)
    assert (result.exit_status, result.stdout, result.stderr) == (1, "", "")
    record = sim.hosts["sim-a"].commands[-1]
    assert (record.env_names, record.env_dropped) == (["LANG", "LC_ALL"], ["FOO", "HF_TOKEN"])
    assert (await run(conn, ["printenv", "LC_ALL"], env=sent)).stdout == "C\n"

    sim.hosts["sim-a"].set_sshd(accept_env=["LANG", "LC_*", "HF_TOKEN"])
    assert (await run(conn, ["printenv", "HF_TOKEN"], env=sent)).stdout == "hf_x\n"


async def test_it_sets_home_and_a_path_without_local_bin_in_the_login_environment(ssh) -> None:
    conn = await ssh("sim-a")
    assert (await run(conn, ["printenv", "HOME"])).stdout == "/home/arbiter\n"
    path = (await run(conn, ["printenv", "PATH"])).stdout.strip()
    assert ".local/bin" not in path and "/usr/bin" in path.split(":")


async def test_it_refuses_the_eleventh_session_and_the_connection_stays_up(sim, ssh) -> None:
    conn = await ssh("sim-b")
    held = [await conn.create_process("cat") for _ in range(10)]
    with pytest.raises(asyncssh.ChannelOpenError) as refused:
        await conn.create_process("cat")
    # OpenSSH >= 7.5: SSH2_OPEN_CONNECT_FAILED, "open failed" (serverloop.c).
    assert (refused.value.code, refused.value.reason) == (
        asyncssh.OPEN_CONNECT_FAILED,
        "open failed",
    )
    assert not conn.is_closed()
    held[0].stdin.write_eof()
    held[0].close()
    await held[0].wait_closed()
    await asyncio.sleep(0.05)
    again = await conn.create_process("cat")  # a freed slot is usable again
    for process in [*held[1:], again]:
        process.stdin.write_eof()
        process.close()
    assert sim.hosts["sim-b"].session_stats == {"peak": 10, "refused": 1}


async def test_it_says_hf_is_not_found_like_dash_unless_hf_is_on_the_path(sim, ssh) -> None:
    conn = await ssh("sim-a")
    missing = await run(conn, ["hf", "version"])
    assert (missing.exit_status, missing.stdout, missing.stderr) == (
        127,
        "",
        "sh: 1: hf: not found\n",
    )
    assert (await run(conn, ["command", "-v", "hf"])).exit_status == 1
    module = await run(conn, ["python3", "-m", "huggingface_hub.cli.hf", "version"])
    assert module.exit_status == 0 and "version:" in module.stdout
    sim.hosts["sim-a"].set_sshd(hub_module=False)
    gone = await run(conn, ["python3", "-m", "huggingface_hub.cli.hf", "version"])
    assert (gone.exit_status, gone.stderr) == (
        1,
        "/usr/bin/python3: No module named huggingface_hub\n",
    )
    sim.hosts["sim-a"].set_sshd(hf_on_path=True)
    assert (await run(conn, ["command", "-v", "hf"])).stdout == "/usr/bin/hf\n"


async def test_it_lists_runtimes_in_docker_info_and_refuses_users_outside_the_group(
    sim, ssh
) -> None:
    conn = await ssh("sim-a")
    info = await run(conn, ["docker", "info", "--format={{json .Runtimes}}"])
    assert json.loads(info.stdout) == {
        "io.containerd.runc.v2": {"path": "runc"},
        "nvidia": {"path": "nvidia-container-runtime"},
        "runc": {"path": "runc"},
    }
    sim.hosts["sim-a"].set_sshd(docker_group=False)
    denied = await run(conn, ["docker", "ps"])
    assert denied.exit_status == 1
    assert denied.stderr.startswith(
        "permission denied while trying to connect to the Docker daemon socket at "
        "unix:///var/run/docker.sock"
    )


async def test_it_lets_a_container_write_the_weights_as_root_into_the_mounted_cache(
    sim, ssh
) -> None:
    conn = await ssh("sim-gb10")
    fs = sim.hosts["sim-gb10"].fs
    argv = [
        "docker",
        "run",
        "--detach",
        "--name=fresh",
        # A bind source that does not exist: dockerd creates it, as root.
        "--volume=/home/arbiter/spark-cache:/root/.cache/huggingface/hub",
        "vllm/vllm-openai:latest",
        "org/tiny-0.5B",
        "--gpu-memory-utilization=0.1",
    ]
    assert (await run(conn, argv)).exit_status == 0
    assert fs.owner("/home/arbiter/spark-cache") == "root"
    assert fs.owner("/home/arbiter/spark-cache/models--org--tiny-0.5B") == "root"
    found = await run(
        conn, ["find", "/home/arbiter/spark-cache", "!", "-user", "arbiter", "-print", "-quit"]
    )
    assert found.stdout == "/home/arbiter/spark-cache\n"
    assert (await run(conn, ["test", "-w", "/home/arbiter/spark-cache"])).exit_status == 1
    # The user's own cache is still the user's.
    assert (await run(conn, ["test", "-w", CACHE])).exit_status == 0
    clean = await run(conn, ["find", CACHE, "!", "-user", "arbiter", "-print", "-quit"])
    assert (clean.exit_status, clean.stdout) == (0, "")


async def test_it_does_not_let_the_user_remove_what_a_root_container_wrote(sim, ssh) -> None:
    conn = await ssh("sim-a")
    fs = sim.hosts["sim-a"].fs
    folder = f"{CACHE}/models--org--rooty"
    fs.add_file(f"{folder}/snapshots/abc/model.safetensors", size=10, owner="root")
    removed = await run(conn, ["rm", "-rf", "--", folder])
    assert (removed.exit_status, removed.stderr) == (
        1,
        f"rm: cannot remove '{folder}/snapshots/abc/model.safetensors': Permission denied\n",
    )
    assert fs.kind(folder) == "dir"
    fs.set_owner(folder, "arbiter", recursive=True)  # `sudo chown -R arbiter: ...`
    assert (await run(conn, ["rm", "-rf", "--", folder])).exit_status == 0
    assert fs.kind(folder) is None
