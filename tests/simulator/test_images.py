"""Simulated images: entrypoints, CMD and architectures, and the ways a real run says no."""

from __future__ import annotations

import json

import pytest

from arbiter.simulator import docker_images
from arbiter.simulator.docker_images import ImageSpec
from tests.helpers import free_port
from tests.simulator.client import run, wait_until

NVIDIA = "nvcr.io/nvidia/vllm:25.09-py3"
OPENAI = "vllm/vllm-openai:v0.11.0"
ENTRYPOINT_SCRIPT = "/opt/nvidia/nvidia_entrypoint.sh"
VLLM_USAGE = "usage: vllm [-h] [-v] {chat,complete,serve,bench,collect-env,run-batch} ..."


def docker_run(name: str, image: str, *after_image: str, port: int = 0) -> list[str]:
    port = port or free_port()
    return [
        "docker",
        "run",
        "-d",
        f"--name={name}",
        "--gpus=all",
        f"-p={port}:8000",
        image,
        *after_image,
    ]


async def exited(sim, host: str, name: str) -> tuple[int, str, str]:
    """Wait for the container to exit; (exit code, stdout log, stderr log)."""
    daemon = sim.hosts[host].daemon
    await wait_until(lambda: daemon.refresh() or not daemon.by_name(name).running)
    container = daemon.by_name(name)
    out, err = (path.read_text() for path in daemon.log_paths(container))
    return container.exit_code, out, err


async def image_inspect(conn, image: str) -> dict:
    result = await run(conn, ["docker", "image", "inspect", "--format={{json .}}", "--", image])
    assert result.exit_status == 0, result.stderr
    return json.loads(result.stdout)


async def test_it_follows_the_hosts_architecture_in_uname_and_pulls(sim, ssh) -> None:
    spark, workstation = await ssh("sim-gb10"), await ssh("sim-a")
    assert (await run(spark, ["uname", "-m"])).stdout == "aarch64\n"
    assert (await run(workstation, ["uname", "-m"])).stdout == "x86_64\n"
    for conn, arch in ((spark, "arm64"), (workstation, "amd64")):
        assert (await run(conn, ["docker", "pull", "-q", NVIDIA])).exit_status == 0
        data = await image_inspect(conn, NVIDIA)
        assert data["Architecture"] == arch
        assert data["Config"]["Entrypoint"] == [ENTRYPOINT_SCRIPT]
        assert data["Config"]["Cmd"] is None
        assert data["RepoTags"] == [NVIDIA] and data["Os"] == "linux"
    assert (await image_inspect(spark, NVIDIA))["Variant"] == "v8"
    assert (await run(spark, ["docker", "pull", "-q", OPENAI])).exit_status == 0
    assert (await image_inspect(spark, OPENAI))["Config"]["Entrypoint"] == ["vllm", "serve"]
    template = "{{json .Config.Entrypoint}} {{.Architecture}}"
    shown = await run(spark, ["docker", "image", "inspect", f"--format={template}", OPENAI])
    assert shown.stdout == '["vllm","serve"] arm64\n'


async def test_it_says_no_such_image_when_inspecting_an_image_that_is_not_there(sim, ssh) -> None:
    conn = await ssh("sim-a")
    result = await run(conn, ["docker", "image", "inspect", "--format={{json .}}", NVIDIA])
    assert (result.exit_status, result.stdout, result.stderr) == (
        1,
        "",
        f"Error: No such image: {NVIDIA}\n",
    )


async def test_it_runs_the_nvidia_images_arguments_as_a_command(sim, ssh) -> None:
    conn = await ssh("sim-a")
    port = free_port()
    argv = docker_run(
        "ngc", NVIDIA, "vllm", "serve", "org/tiny", "--served-model-name=tiny", port=port
    )
    started = await run(conn, argv)
    assert started.exit_status == 0, started.stderr
    container = sim.hosts["sim-a"].container("ngc")
    await wait_until(lambda: sim.hosts["sim-a"].daemon.refresh() or container.ready)
    inspected = json.loads((await run(conn, ["docker", "inspect", "ngc"])).stdout)[0]
    assert (inspected["Path"], inspected["Args"][:3]) == (
        ENTRYPOINT_SCRIPT,
        ["vllm", "serve", "org/tiny"],
    )
    assert inspected["Config"]["Entrypoint"] == [ENTRYPOINT_SCRIPT]
    out, _err = (path.read_text() for path in sim.hosts["sim-a"].daemon.log_paths(container))
    assert out.index("== vLLM ==") < out.index("Application startup complete.")


async def test_it_fails_flags_alone_in_the_nvidia_entrypoints_exec(sim, ssh) -> None:
    conn = await ssh("sim-a")
    started = await run(
        conn, docker_run("ngc-flags", NVIDIA, "--served-model-name=tiny", "--port=8000")
    )
    assert started.exit_status == 0, started.stderr  # docker started it; bash then gives up
    code, out, err = await exited(sim, "sim-a", "ngc-flags")
    assert code == 2
    assert "== vLLM ==" in out
    assert err == (
        f"{ENTRYPOINT_SCRIPT}: line 67: exec: --: invalid option\n"
        "exec: usage: exec [-cl] [-a name] [command [argument ...]] [redirection ...]\n"
    )


async def test_it_treats_a_model_name_first_as_no_program_for_the_nvidia_entrypoint(
    sim, ssh
) -> None:
    conn = await ssh("sim-a")
    assert (
        await run(conn, docker_run("ngc-model", NVIDIA, "org/tiny", "--port=8000"))
    ).exit_status == 0
    code, _out, err = await exited(sim, "sim-a", "ngc-model")
    # bash resolves a name with a slash against the working directory (/workspace).
    assert (code, err) == (
        127,
        f"{ENTRYPOINT_SCRIPT}: line 67: /workspace/org/tiny: No such file or directory\n",
    )


async def test_it_does_not_recognize_vllm_serve_after_the_vllm_openai_entrypoint(sim, ssh) -> None:
    conn = await ssh("sim-a")
    argv = docker_run("doubled", OPENAI, "vllm", "serve", "org/tiny", "--served-model-name=tiny")
    assert (await run(conn, argv)).exit_status == 0
    code, _out, err = await exited(sim, "sim-a", "doubled")
    assert (code, err) == (
        2,
        f"{VLLM_USAGE}\nvllm: error: unrecognized arguments: serve org/tiny\n",
    )


async def test_it_moves_the_model_flag_first_with_vllms_warning(sim, ssh) -> None:
    conn = await ssh("sim-a")
    port = free_port()
    argv = docker_run(
        "flagged", OPENAI, "--model", "org/tiny", "--served-model-name=tiny", port=port
    )
    assert (await run(conn, argv)).exit_status == 0
    host = sim.hosts["sim-a"]
    await wait_until(lambda: host.daemon.refresh() or host.container("flagged").ready)
    out, _err = (path.read_text() for path in host.daemon.log_paths(host.container("flagged")))
    assert "provide the model as a positional argument" in out
    # Both the flag and a positional: vLLM sees two positionals.
    both = docker_run("both", OPENAI, "org/a", "--model=org/b")
    assert (await run(conn, both)).exit_status == 0
    code, _out, err = await exited(sim, "sim-a", "both")
    assert (code, err.splitlines()[-1]) == (2, "vllm: error: unrecognized arguments: org/a")


async def test_it_keeps_an_entrypoint_override_working(sim, ssh) -> None:
    conn = await ssh("sim-a")
    port = free_port()
    argv = [
        "docker", "run", "-d", "--name=override", "--gpus=all", f"-p={port}:8000",
        "--entrypoint=vllm", NVIDIA, "serve", "org/tiny",
    ]  # fmt: skip
    assert (await run(conn, argv)).exit_status == 0
    host = sim.hosts["sim-a"]
    await wait_until(lambda: host.daemon.refresh() or host.container("override").ready)
    # A program the image does not have: runc refuses and `docker run` exits 127.
    missing = docker_run("missing", NVIDIA)
    missing.insert(3, "--entrypoint=no-such-program")
    result = await run(conn, missing)
    assert result.exit_status == 127
    assert 'exec: "no-such-program": executable file not found in $PATH' in result.stderr


async def test_it_fails_an_image_of_another_architecture_with_exec_format_error(
    sim, ssh, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A single-platform (amd64-only) image: the pull succeeds on an arm64 host, the run not.
    spec = ImageSpec(("vllm", "serve"), None, ("amd64",))
    monkeypatch.setitem(docker_images.KNOWN_IMAGES, "example.com/team/vllm-amd64", spec)
    image = "example.com/team/vllm-amd64:1"
    conn = await ssh("sim-gb10")
    assert (await run(conn, ["docker", "pull", "-q", image])).exit_status == 0
    assert (await image_inspect(conn, image))["Architecture"] == "amd64"
    started = await run(conn, docker_run("foreign-arch", image, "org/tiny"))
    assert started.exit_status == 0
    assert (
        "WARNING: The requested image's platform (linux/amd64) does not match the detected "
        "host platform (linux/arm64/v8) and no specific platform was requested\n"
    ) in started.stderr
    code, _out, err = await exited(sim, "sim-gb10", "foreign-arch")
    assert (code, err) == (255, "exec /usr/local/bin/vllm: exec format error\n")


async def test_it_does_not_pull_a_multi_platform_image_without_the_hosts_platform(
    sim, ssh, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = ImageSpec(("vllm", "serve"), None, ("amd64", "ppc64le"))
    monkeypatch.setitem(docker_images.KNOWN_IMAGES, "example.com/team/no-arm", spec)
    conn = await ssh("sim-gb10")
    result = await run(conn, ["docker", "pull", "example.com/team/no-arm:1"])
    assert (result.exit_status, result.stderr) == (
        1,
        "Error response from daemon: no matching manifest for linux/arm64/v8 in the manifest "
        "list entries\n",
    )
    # --platform picks another entry on purpose; docker run then warns about nothing.
    pulled = await run(
        conn, ["docker", "pull", "-q", "--platform=linux/amd64", "example.com/team/no-arm:1"]
    )
    assert pulled.exit_status == 0
    assert (await image_inspect(conn, "example.com/team/no-arm:1"))["Architecture"] == "amd64"
