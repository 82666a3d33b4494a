"""The launch command per model: the image's command, the positional model, pre-flight's
look at the image's entrypoint and architecture, on the simulated cluster."""

import json

import pytest
from asgiref.sync import sync_to_async

from arbiter.engine import ssh
from arbiter.engine.swaps.image_check import ImageConfig, fit_problems, parse_inspect
from arbiter.models import Host
from arbiter.simulator import docker_images
from arbiter.simulator.docker_images import ImageSpec
from catalog.models import CatalogModel
from tests.swaps.conftest import log_lines, make_model, start_swap, wait_for_state

pytestmark = pytest.mark.django_db(transaction=True)
NVIDIA = "nvcr.io/nvidia/vllm:25.09-py3"
OPENAI = "vllm/vllm-openai:latest"
FINAL = ["complete", "failed", "cancelled"]


@sync_to_async
def target(host: str) -> ssh.SshTarget:
    return ssh.SshTarget.from_host(Host.objects.get(name=host))


async def pull(host: str, image: str) -> None:
    """Put the image on the host first, as an earlier launch (or an operator) would."""
    result = await ssh.run(await target(host), ["docker", "pull", "-q", image], timeout=30)
    assert result.exit_status == 0, result.stderr


async def validate(aclient, key: str, host: str = "sim-b") -> dict[str, dict]:
    response = await aclient.post(f"/api/swap/{key}/validate", {"host": host}, "application/json")
    assert response.status_code == 200, response.content
    return {check["name"]: check for check in response.json()["checks"]}


async def test_it_swaps_an_nvidia_image_model_with_its_default_command_to_complete(
    cluster, dispatcher, aclient
):
    created = await aclient.post(
        "/api/models",
        {
            "key": "qwen-ngc",
            "hub_repo": "Qwen/Qwen3-0.6B",
            "served_name": "qwen-ngc",  # qwen3-small (the fixture) serves as the repo id
            "image": NVIDIA,
            "gpu_memory_utilization": 0.3,
        },
        "application/json",
    )
    assert created.status_code == 201, created.content
    assert created.json()["command"] == ["vllm", "serve"]  # the image's default, stored
    image_check = (await validate(aclient, "qwen-ngc"))["image"]
    assert image_check["ok"] is True
    assert "pulled at launch" in image_check["detail"]

    response = await start_swap(aclient, "qwen-ngc")
    assert response.status_code == 202, response.content
    swap = await wait_for_state(response.json()["id"], FINAL)
    assert swap.state == "complete", swap.error
    argv = swap.launch_argv
    at = argv.index(NVIDIA)
    assert argv[at + 1 : at + 4] == ["vllm", "serve", "Qwen/Qwen3-0.6B"]
    assert not any(item.startswith("--model") for item in argv)
    container = next(c for c in cluster.containers("sim-b") if c.status == "running")
    assert container.args[:3] == ["vllm", "serve", "Qwen/Qwen3-0.6B"]
    # Pulled by the launch: the next pre-flight inspects it and finds it fits.
    image_check = (await validate(aclient, "qwen-ngc"))["image"]
    assert image_check["ok"] is True
    assert '["/opt/nvidia/nvidia_entrypoint.sh"]' in image_check["detail"]


async def test_it_fails_preflight_naming_the_nvidia_entrypoint_when_flags_follow_it(
    cluster, dispatcher, aclient
):
    await sync_to_async(make_model)("ngc-bare", image=NVIDIA, command=[])
    await pull("sim-b", NVIDIA)
    before = len(cluster.commands("sim-b"))
    check = (await validate(aclient, "ngc-bare"))["image"]
    assert check["ok"] is False
    assert check["detail"] == (
        f'image {NVIDIA}\'s entrypoint is ["/opt/nvidia/nvidia_entrypoint.sh"]; it runs its '
        'arguments as a command: set command to ["vllm", "serve"]'
    )
    sent = [c.argv for c in cluster.commands("sim-b")[before:]]
    assert ["uname", "-m"] in sent
    assert ["docker", "image", "inspect", "--format={{json .}}", "--", NVIDIA] in sent

    response = await start_swap(aclient, "ngc-bare")
    swap = await wait_for_state(response.json()["id"], FINAL)
    assert swap.state == "failed"
    assert "nvidia_entrypoint.sh" in swap.error
    assert not any(
        argv[:2] == ["docker", "run"] for argv in (c.argv for c in cluster.commands("sim-b"))
    )


async def test_it_leaves_the_refusal_to_the_nvidia_entrypoint_itself_without_the_check(
    cluster, dispatcher, aclient
):
    """Not on the host yet, the image is not inspected: the launch fails as the real one."""
    await sync_to_async(make_model)("ngc-bare", image=NVIDIA, command=[])
    response = await start_swap(aclient, "ngc-bare")
    swap = await wait_for_state(response.json()["id"], FINAL)
    assert swap.state == "failed"
    lines = await log_lines(swap.pk)
    assert (
        "/opt/nvidia/nvidia_entrypoint.sh: line 67: /workspace/Qwen/Qwen3-0.6B: "
        "No such file or directory"
    ) in lines


async def test_it_fails_preflight_for_vllm_serve_after_the_vllm_openai_entrypoint(cluster, aclient):
    await sync_to_async(make_model)("doubled", image=OPENAI, command=["vllm", "serve"])
    await pull("sim-b", OPENAI)
    check = (await validate(aclient, "doubled"))["image"]
    assert check["ok"] is False
    assert check["detail"].startswith(f'image {OPENAI}\'s entrypoint is ["vllm", "serve"]')
    assert check["detail"].endswith("set command to []")


async def test_it_fails_preflight_for_an_image_of_another_architecture(
    cluster, aclient, monkeypatch
):
    monkeypatch.setitem(
        docker_images.KNOWN_IMAGES,
        "example.com/team/vllm-amd64",
        ImageSpec(("vllm", "serve"), None, ("amd64",)),
    )
    image = "example.com/team/vllm-amd64:1"
    await sync_to_async(make_model)("x86-only", image=image, command=[])
    await pull("sim-gb10", image)
    check = (await validate(aclient, "x86-only", host="sim-gb10"))["image"]
    assert check["ok"] is False
    assert "built for linux/amd64 but sim-gb10 is linux/arm64" in check["detail"]
    # The same image on an x86_64 host fits.
    await pull("sim-b", image)
    assert (await validate(aclient, "x86-only"))["image"]["ok"] is True


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"command": ["vllm", "--serve"]}, "must not start with '-'"),
        ({"command": ["-c", "id"]}, "must not start with '-'"),
        ({"command": ["vllm;id"]}, "no spaces or shell characters"),
        ({"command": ["$(id)"]}, "no spaces or shell characters"),
        ({"command": ["`id`"]}, "no spaces or shell characters"),
        ({"command": ["vllm serve"]}, "no spaces or shell characters"),
        ({"command": "vllm serve"}, "valid list"),  # the schema's own words
        ({"image": "example.com/unknown/server:1"}, "knows no launch command"),
    ],
)
async def test_it_refuses_bad_commands_with_422_naming_the_field_and_writes_nothing(
    cluster_rows, aclient, settings, body, needle
):
    settings.ARBITER_ALLOWED_IMAGES = [*settings.ARBITER_ALLOWED_IMAGES, "example.com/unknown/*"]
    response = await aclient.post(
        "/api/models", {"key": "bad", "hub_repo": "Qwen/Qwen3-0.6B", **body}, "application/json"
    )
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert error["field"] == "command"
    assert needle in error["message"]
    assert not await sync_to_async(CatalogModel.objects.filter(key="bad").exists)()


@pytest.mark.parametrize(
    ("entrypoint", "command", "fix"),
    [
        (("/opt/nvidia/nvidia_entrypoint.sh",), (), 'set command to ["vllm", "serve"]'),
        ((), (), 'set command to ["vllm", "serve"]'),
        (("vllm", "serve"), ("vllm", "serve"), "set command to []"),
        (("/usr/local/bin/vllm", "serve"), ("vllm", "serve"), "set command to []"),
        (("python3", "-m", "vllm.entrypoints.openai.api_server"), (), "takes the model only"),
    ],
)
def test_it_names_the_entrypoint_and_the_fix_for_each_misfit(entrypoint, command, fix):
    config = ImageConfig(entrypoint=entrypoint, cmd=(), architecture="amd64")
    problems = fit_problems("img:1", command, config, "sim-b", "amd64")
    assert len(problems) == 1 and fix in problems[0]
    named = json.dumps(list(entrypoint)) if entrypoint else "has no entrypoint"
    assert named in problems[0]


def test_it_finds_no_problems_with_fitting_images_and_reads_inspect_output():
    raw = json.dumps(
        {
            "Id": "sha256:1",
            "Config": {"Entrypoint": ["vllm", "serve"], "Cmd": None},
            "Architecture": "arm64",
        }
    )
    config = parse_inspect(raw)
    assert config == ImageConfig(("vllm", "serve"), (), "arm64")
    assert fit_problems("img:1", (), config, "spark", "arm64") == []
    nvidia = ImageConfig(("/opt/nvidia/nvidia_entrypoint.sh",), (), "arm64")
    assert fit_problems("img:1", ("vllm", "serve"), nvidia, "spark", "arm64") == []
    assert parse_inspect("not json") is None
