"""A swap touches only what Arbiter owns: its labelled containers, and adopted ones.

End to end on the simulated cluster: a container a script started with `--network host`
on the service port (no ports in `docker ps`, no label) makes pre-flight fail naming it,
and is still running afterwards; adopted through `PATCH /api/services/{name}` it is
stopped and removed and the swap completes. The classification itself is unit-tested
on `docker ps` rows shaped like docker/cli prints them.
"""

import asyncio
import json
import time

import httpx
import pytest
from asgiref.sync import sync_to_async

from arbiter.engine.swaps.docker_argv import ContainerInfo, parse_labels, parse_ps
from arbiter.engine.swaps.preflight import load_plan, read_slot
from arbiter.engine.swaps.slot import classify
from arbiter.models import Service
from tests.swaps.conftest import log_lines, start_swap, wait_for_state

IMAGE = "nvcr.io/nvidia/vllm:25.09-py3"
FINAL = ["complete", "failed", "cancelled"]


# -- docker ps rows and the classification ----------------------------------------------
def row(name, *, labels="", networks="bridge", ports="", state="running", command="") -> str:
    return json.dumps(
        {
            "ID": f"id-{name}",
            "Names": name,
            "Image": IMAGE,
            "State": state,
            "Labels": labels,
            "Networks": networks,
            "Ports": ports,
            "Command": json.dumps(command),
        }
    )


MINE = "arbiter.managed=true,arbiter.model=qwen,arbiter.swap=12"


def test_it_reads_labels_networks_and_published_ports_with_parse_ps():
    [mine, node] = parse_ps(
        row("arbiter-vllm", labels=MINE, ports="0.0.0.0:18000->8000/tcp, [::]:18000->8000/tcp")
        + "\n"
        + row("vllm_node", networks="host", command="vllm serve m --port 8888")
    )
    assert mine.managed and mine.labels["arbiter.swap"] == "12" and mine.host_ports == (18000,) * 2
    assert not node.managed and node.host_network and node.host_ports == ()
    assert parse_labels("a=1,b=x,y,c=") == {"a": "1", "b": "x,y", "c": ""}


def infos(*rows: str) -> list[ContainerInfo]:
    return parse_ps("\n".join(rows))


def test_it_replaces_arbiters_own_containers_and_others_are_left_alone():
    containers = infos(
        row("arbiter-vllm", labels=MINE, state="exited"),  # the name the launch needs
        row("arbiter-old", labels=MINE, ports="0.0.0.0:8000->8000/tcp"),  # holds the port
        row("arbiter-embed", labels=MINE, ports="0.0.0.0:8001->8000/tcp"),  # another slot
        row("grafana", ports="0.0.0.0:3000->3000/tcp"),
    )
    slot = classify(containers, container_name="arbiter-vllm", port=8000, port_answers=True)
    assert [c.name for c in slot.to_replace] == ["arbiter-vllm", "arbiter-old"]
    assert slot.ok and slot.foreign == ()


def test_it_lets_a_host_network_container_hold_the_slot_only_while_the_port_answers():
    node = row("vllm_node", networks="host", command="vllm serve m --port 8888")
    quiet = classify(infos(node), container_name="arbiter-vllm", port=8888, port_answers=False)
    assert quiet.ok and quiet.to_replace == []
    held = classify(infos(node), container_name="arbiter-vllm", port=8888, port_answers=True)
    assert [(c.name, how) for c, how in held.foreign] == [
        ("vllm_node", "runs with host networking while port 8888 answers")
    ]
    adopted = classify(
        infos(node),
        container_name="arbiter-vllm",
        port=8888,
        adopt=["vllm_node"],
        port_answers=True,
    )
    assert adopted.ok and [c.name for c in adopted.to_replace] == ["vllm_node"]


def test_it_blames_no_host_network_container_for_an_answer_another_container_explains():
    containers = infos(
        row("arbiter-vllm", labels=MINE, ports="0.0.0.0:8888->8000/tcp"),
        row("node-exporter", networks="host"),
        row("comfyui", networks="host", command="python main.py --port 8188"),
    )
    slot = classify(containers, container_name="arbiter-vllm", port=8888, port_answers=True)
    assert slot.ok and [c.name for c in slot.to_replace] == ["arbiter-vllm"]
    # Nothing of Arbiter's there: the host-network one naming another port is not blamed,
    # and the answer comes from outside docker.
    alone = classify(containers[2:], container_name="arbiter-vllm", port=8888, port_answers=True)
    assert alone.foreign == () and alone.outside_listener and not alone.ok


def test_it_fails_the_slot_on_foreign_containers_by_port_or_name():
    containers = infos(
        row("ollama", ports="0.0.0.0:8000->11434/tcp"),
        row("arbiter-vllm", state="exited"),  # unlabelled: an older Arbiter, or someone else
    )
    slot = classify(containers, container_name="arbiter-vllm", port=8000)
    assert [(c.name, how) for c, how in slot.foreign] == [
        ("ollama", "publishes port 8000"),
        ("arbiter-vllm", "has the name arbiter-vllm the launch needs"),
    ]
    assert slot.to_replace == [] and not slot.ok


# -- end to end ------------------------------------------------------------------------
@sync_to_async
def service_port(name: str) -> int:
    return int(Service.objects.get(name=name).base_url.rsplit(":", 1)[1])


async def served_ids(port: int, timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
        while True:
            try:
                response = await client.get(f"http://127.0.0.1:{port}/v1/models")
                if response.status_code == 200:
                    return [m["id"] for m in response.json()["data"]]
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"nothing served on {port}"
            await asyncio.sleep(0.1)


async def start_vllm_node(cluster, host: str = "sim-b", service: str = "sim-b-vllm", **extra):
    port = await service_port(service)
    await sync_to_async(cluster.start_container)(host, "vllm_node", IMAGE, port, **extra)
    assert await served_ids(port) == ["Qwen/Qwen3-0.6B"]
    return port


def docker_argvs(cluster, host: str, since: int = 0) -> list[list[str]]:
    return [c.argv for c in cluster.commands(host)[since:] if c.argv[:1] == ["docker"]]


async def swap_and_wait(aclient, model: str, host: str = "sim-b"):
    response = await start_swap(aclient, model, host)
    assert response.status_code == 202, response.content
    return await wait_for_state(response.json()["id"], FINAL)


async def test_it_fails_preflight_on_a_foreign_host_network_container_and_keeps_it_running(
    cluster, dispatcher, aclient
):
    port = await start_vllm_node(cluster)
    since = len(cluster.commands("sim-b"))
    swap = await swap_and_wait(aclient, "smollm2")
    assert swap.state == "failed"
    slot = next(c for c in swap.checks if c["name"] == "slot")
    assert slot["ok"] is False
    assert slot["detail"].startswith(
        f"container vllm_node (image {IMAGE}, running) runs with host networking while port "
        f"{port} answers on sim-b, and Arbiter did not start it: it is left alone."
    )
    assert slot["detail"].endswith(
        "add `adopt_containers: [vllm_node]` to service sim-b-vllm in the inventory"
    )
    assert swap.error.startswith("pre-flight failed: slot: container vllm_node")
    # Nothing was stopped, removed or started; the script's model is still served.
    assert not any(
        argv[1] in ("stop", "rm", "run", "kill") for argv in docker_argvs(cluster, "sim-b", since)
    )
    assert cluster.container("sim-b", "vllm_node").running
    assert await served_ids(port) == ["Qwen/Qwen3-0.6B"]
    # The same answer from validate, without a swap.
    checks = (
        await aclient.post("/api/swap/smollm2/validate", {"host": "sim-b"}, "application/json")
    ).json()["checks"]
    assert {c["name"]: c["ok"] for c in checks}["slot"] is False


async def test_it_names_a_foreign_container_publishing_the_port_too(cluster, aclient):
    port = await start_vllm_node(cluster, network="bridge")
    body = (
        await aclient.post("/api/swap/smollm2/validate", {"host": "sim-b"}, "application/json")
    ).json()
    slot = {c["name"]: c for c in body["checks"]}["slot"]
    assert body["ok"] is False and slot["ok"] is False
    assert slot["detail"].startswith(
        f"container vllm_node (image {IMAGE}, running) publishes port {port} on sim-b"
    )
    assert cluster.container("sim-b", "vllm_node").running


async def test_it_stops_and_removes_an_adopted_container_and_the_swap_completes(
    cluster, dispatcher, aclient, admin_aclient
):
    port = await start_vllm_node(cluster)
    adopted = await admin_aclient.patch(
        "/api/services/sim-b-vllm", {"adopt_containers": ["vllm_node"]}, "application/json"
    )
    assert adopted.status_code == 200, adopted.content
    since = len(cluster.commands("sim-b"))
    swap = await swap_and_wait(aclient, "smollm2")
    assert swap.state == "complete", swap.error
    slot = next(c for c in swap.checks if c["name"] == "slot")
    assert slot == {"name": "slot", "ok": True, "detail": "replaces vllm_node (running, adopted)"}
    sent = docker_argvs(cluster, "sim-b", since)
    assert ["docker", "stop", "-t", "30", "--", "vllm_node"] in sent
    assert ["docker", "rm", "--force", "--", "vllm_node"] in sent
    assert cluster.container("sim-b", "vllm_node") is None
    lines = await log_lines(swap.pk)
    assert "stopping vllm_node" in lines and "removing vllm_node" in lines
    assert await served_ids(port) == ["smollm2-instruct"]


async def test_it_labels_arbiters_containers_and_replaces_them_as_before(
    cluster, dispatcher, aclient
):
    first = await swap_and_wait(aclient, "qwen3-small")
    assert first.state == "complete", first.error
    mine = cluster.container("sim-b", "arbiter-vllm")
    assert mine.labels == {
        "arbiter.managed": "true",
        "arbiter.model": "qwen3-small",
        "arbiter.swap": str(first.pk),
    }
    run = first.launch_argv
    labels = [a for a in run if a.startswith("--label=")]
    assert labels == [
        "--label=arbiter.managed=true",
        "--label=arbiter.model=qwen3-small",
        f"--label=arbiter.swap={first.pk}",
    ]
    assert run.index(labels[-1]) < run.index("vllm/vllm-openai:latest")
    detail = (await aclient.get(f"/api/swap/{first.pk}")).json()
    assert f"--label=arbiter.swap={first.pk}" in detail["command"]
    # Validation has no swap: its command shows the other labels only.
    validated = (
        await aclient.post("/api/swap/smollm2/validate", {"host": "sim-b"}, "application/json")
    ).json()
    assert "--label=arbiter.model=smollm2" in validated["command"]
    assert "arbiter.swap" not in validated["command"]

    second = await swap_and_wait(aclient, "smollm2")
    assert second.state == "complete", second.error
    lines = await log_lines(second.pk)
    assert "stopping arbiter-vllm" in lines and "removing arbiter-vllm" in lines
    assert cluster.container("sim-b", "arbiter-vllm").labels["arbiter.swap"] == str(second.pk)


@pytest.mark.parametrize("adopt", [False, True])
async def test_it_sees_the_host_network_holder_in_the_slot_read_over_ssh(cluster, adopt):
    """What pre-flight and step_stopping read: `docker ps` over SSH plus the port probe."""
    port = await start_vllm_node(cluster)
    if adopt:
        await sync_to_async(Service.objects.filter(name="sim-b-vllm").update)(
            adopt_containers=["vllm_node"]
        )
    plan = await sync_to_async(load_plan)("smollm2", "sim-b")
    slot = await read_slot(plan)
    assert slot.ok is adopt
    assert [c.name for c in slot.to_replace] == (["vllm_node"] if adopt else [])
    assert port == plan.service_port
