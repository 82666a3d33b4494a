"""Swaps end to end on the simulated cluster: API → dispatcher → SSH → simulated docker."""

import asyncio
import time

import httpx
import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from arbiter import events
from arbiter.engine.swaps.dispatch import SwapDispatcher
from arbiter.models import Service
from dashboard.live import DASHBOARD_GROUP
from tests.swaps.conftest import (
    log_lines,
    make_model,
    start_swap,
    swap_row,
    transitions,
    wait_for_state,
)

pytestmark = pytest.mark.django_db(transaction=True)
FINAL = ["complete", "failed", "cancelled"]


def gpu_used(cluster, host: str) -> list[int | None]:
    return [r.memory_used_mib for r in cluster.hosts[host].board.readings()]


def containers(cluster, host: str) -> dict[str, str]:
    """name -> status, as `docker ps -a` on the host lists them."""
    return {c.name: c.status for c in cluster.containers(host)}


def docker_commands(cluster, host: str, since: int = 0) -> list[list[str]]:
    return [c.argv for c in cluster.commands(host)[since:] if c.argv[:1] == ["docker"]]


async def service_url(name: str) -> str:
    return await sync_to_async(lambda: Service.objects.get(name=name).base_url)()


async def swap_and_wait(aclient, model: str, host: str = "sim-b", **extra):
    response = await start_swap(aclient, model, host, **extra)
    assert response.status_code == 202, response.content
    return await wait_for_state(response.json()["id"], FINAL)


async def test_it_goes_through_its_states_in_order_and_serves_the_model(
    cluster, dispatcher, aclient
):
    before = gpu_used(cluster, "sim-b")
    response = await start_swap(aclient, "qwen3-small")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["state"] == "pending"
    assert body["url"] == f"/api/swap/{body['id']}"
    assert body["stream_url"] == f"/api/swap/{body['id']}/stream"

    swap = await wait_for_state(body["id"], FINAL)
    assert swap.state == "complete", swap.error
    assert await transitions(swap.pk) == [
        "pending",
        "preflight",
        "stopping",
        "launching",
        "waiting_healthy",
        "complete",
    ]
    base_url = await service_url("sim-b-vllm")
    models = httpx.get(f"{base_url}/v1/models", timeout=5).json()
    assert [m["id"] for m in models["data"]] == ["Qwen/Qwen3-0.6B"]
    after = gpu_used(cluster, "sim-b")
    assert after[0] > before[0] + 20_000  # 0.3 of an 80 GB H100
    assert any("Application startup complete." in line for line in await log_lines(swap.pk))
    assert swap.started_at and swap.finished_at

    detail = (await aclient.get(body["url"])).json()
    assert [t["state"] for t in detail["transitions"]][-1] == "complete"
    assert detail["command"].startswith("docker run --detach --name=arbiter-vllm ")
    assert all(check["ok"] for check in detail["checks"])
    assert detail["log_lines"] == len(await log_lines(swap.pk))


async def test_it_waits_until_the_old_model_s_memory_is_freed(cluster, dispatcher, aclient):
    # 0.6 of the H100 twice: the second cannot start while the first's memory is held.
    await sync_to_async(make_model)("big-a", served_name="big-a", gpu_memory_utilization=0.6)
    await sync_to_async(make_model)("big-b", served_name="big-b", gpu_memory_utilization=0.6)
    first = await swap_and_wait(aclient, "big-a")
    assert first.state == "complete", first.error
    second = await swap_and_wait(aclient, "big-b")
    assert second.state == "complete", second.error
    lines = await log_lines(second.pk)
    waited = [i for i, line in enumerate(lines) if "waiting for GPU memory to be freed" in line]
    removed = lines.index("removing arbiter-vllm")
    assert waited and waited[0] < removed < lines.index("→ launching")
    assert not any("Free memory on device" in line for line in lines)
    models = httpx.get(f"{await service_url('sim-b-vllm')}/v1/models", timeout=5).json()
    assert [m["id"] for m in models["data"]] == ["big-b"]


async def test_it_fails_with_the_log_kept_when_the_container_fails_on_start(
    cluster, dispatcher, aclient
):
    cluster.inject("sim-b", fail_start=True)
    swap = await swap_and_wait(aclient, "qwen3-small")
    assert swap.state == "failed"
    assert swap.error == "container exited with status 1"
    assert (await transitions(swap.pk))[-2:] == ["waiting_healthy", "failed"]
    stdout = await log_lines(swap.pk, "stdout")
    stderr = await log_lines(swap.pk, "stderr")
    assert any("EngineCore failed to start." in line for line in stdout)
    assert any("Engine core initialization failed" in line for line in stderr)
    log = (await aclient.get(f"/api/swap/{swap.pk}/log")).json()
    assert log["final"] and log["state"] == "failed"
    assert [line["seq"] for line in log["lines"]] == list(range(1, len(log["lines"]) + 1))


async def test_it_fails_with_a_clear_reason_when_the_start_is_slower_than_the_timeout(
    cluster, dispatcher, aclient, settings
):
    settings.ARBITER_SWAP_HEALTH_TIMEOUT = 2.0
    cluster.inject("sim-b", slow_start=30)
    started = time.monotonic()
    swap = await swap_and_wait(aclient, "qwen3-small")
    assert swap.state == "failed"
    assert time.monotonic() - started < 10
    assert swap.error.startswith(
        "load: 'Qwen/Qwen3-0.6B' was not served within 2 s of the container start "
        "(ARBITER_SWAP_HEALTH_TIMEOUT; last check: "
    )
    assert swap.error.endswith("container arbiter-vllm stopped")
    assert containers(cluster, "sim-b") == {"arbiter-vllm": "exited"}
    assert any("vLLM API server version" in line for line in await log_lines(swap.pk, "stdout"))


async def test_it_cancels_and_removes_the_container_it_launched(cluster, dispatcher, aclient):
    cluster.inject("sim-b", slow_start=30)
    response = await start_swap(aclient, "qwen3-small")
    swap_id = response.json()["id"]
    await wait_for_state(swap_id, "waiting_healthy")
    assert containers(cluster, "sim-b") == {"arbiter-vllm": "running"}

    asked = time.monotonic()
    cancel = await aclient.post(f"/api/swap/{swap_id}/cancel")
    assert cancel.status_code == 202, cancel.content
    swap = await wait_for_state(swap_id, FINAL, timeout=10)
    assert swap.state == "cancelled"
    assert time.monotonic() - asked < 3.0
    assert containers(cluster, "sim-b") == {}  # `docker ps -a` lists nothing
    assert (await transitions(swap_id))[-1] == "cancelled"
    again = await aclient.post(f"/api/swap/{swap_id}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["state"] == "cancelled"


async def test_it_cancels_a_pending_swap_at_once(cluster, aclient):
    response = await start_swap(aclient, "qwen3-small")  # no dispatcher: stays pending
    swap_id = response.json()["id"]
    cancel = await aclient.post(f"/api/swap/{swap_id}/cancel")
    assert cancel.status_code == 202
    assert cancel.json()["state"] == "cancelled"
    assert await transitions(swap_id) == ["pending", "cancelled"]


async def test_it_announces_a_pending_swap_cancelled_through_the_api(cluster, aclient):
    """No engine runs a pending swap, so the API itself announces that it ended, and the
    dashboards' swap panels show it (else they would show it pending)."""
    response = await start_swap(aclient, "qwen3-small")  # no dispatcher: stays pending
    swap_id = response.json()["id"]
    layer = get_channel_layer()
    panel = await layer.new_channel()
    await layer.group_add(DASHBOARD_GROUP, panel)
    announced = []

    def listen(sender, **kwargs):
        announced.append(kwargs)

    events.swap_progressed.connect(listen)
    try:
        assert (await aclient.post(f"/api/swap/{swap_id}/cancel")).status_code == 202
    finally:
        events.swap_progressed.disconnect(listen)

    assert [(a["swap_id"], a["ended"]) for a in announced] == [(swap_id, True)]
    html = (await asyncio.wait_for(layer.receive(panel), 2))["html"]
    assert html.lstrip().startswith('<section id="swap-panel"')
    assert f'data-swap-id="{swap_id}" data-state="cancelled"' in html


async def test_it_answers_409_with_the_running_swap_s_id_to_a_second_swap_on_the_same_host(
    cluster, dispatcher, aclient
):
    cluster.inject("sim-b", slow_start=30)
    first = (await start_swap(aclient, "qwen3-small")).json()
    await wait_for_state(first["id"], "waiting_healthy")
    second = await start_swap(aclient, "smollm2")
    assert second.status_code == 409
    error = second.json()["error"]
    assert error["type"] == "conflict"
    assert error["swap_id"] == first["id"]
    assert error["field"] == "host"
    # Another host is free.
    other = await start_swap(aclient, "smollm2", host="sim-a")
    assert other.status_code == 202
    await aclient.post(f"/api/swap/{first['id']}/cancel")
    await wait_for_state(first["id"], FINAL)
    await wait_for_state(other.json()["id"], FINAL)


async def test_it_fires_no_docker_command_that_changes_anything_on_a_dry_run(
    cluster, dispatcher, aclient
):
    served = await swap_and_wait(aclient, "qwen3-small")
    assert served.state == "complete"
    since = len(cluster.commands("sim-b"))
    swap = await swap_and_wait(aclient, "smollm2", dry_run=True)
    assert swap.state == "complete" and swap.dry_run
    assert await transitions(swap.pk) == ["pending", "preflight", "complete"]
    sent = docker_commands(cluster, "sim-b", since)
    subcommands = {" ".join(argv[1:3]) if argv[1] == "image" else argv[1] for argv in sent}
    assert subcommands <= {"version", "ps", "inspect", "image inspect", "logs", "images"}
    assert swap.launch_argv[:2] == ["docker", "run"]
    lines = await log_lines(swap.pk)
    assert "dry run: would stop and remove arbiter-vllm" in lines
    assert any(line.startswith("dry run: would run docker run ") for line in lines)
    # The model that was served still is.
    models = httpx.get(f"{await service_url('sim-b-vllm')}/v1/models", timeout=5).json()
    assert [m["id"] for m in models["data"]] == ["Qwen/Qwen3-0.6B"]


async def test_it_fails_the_swap_with_the_failing_checks_on_a_failed_preflight(
    cluster, dispatcher, aclient
):
    await sync_to_async(make_model)(
        "local-missing", hub_repo="", local_path="/models/finetunes/nowhere", served_name="x"
    )
    swap = await swap_and_wait(aclient, "local-missing")
    assert swap.state == "failed"
    assert swap.error.startswith("pre-flight failed: files: /models/finetunes/nowhere")
    assert {c["name"]: c["ok"] for c in swap.checks}["files"] is False
    assert docker_commands(cluster, "sim-b") and not any(
        argv[1] in ("run", "stop", "rm") for argv in docker_commands(cluster, "sim-b")
    )


async def test_it_sends_the_hub_token_in_the_environment_never_on_a_command_line(
    cluster, dispatcher, aclient, settings
):
    token = "hf_SECRETtoken1234567890"
    settings.ARBITER_HF_TOKEN = token
    cluster.accept_hf_token("sim-b")  # AcceptEnv HF_TOKEN: stock sshd would drop it
    swap = await swap_and_wait(aclient, "qwen3-small")
    assert swap.state == "complete", swap.error
    records = cluster.commands("sim-b")
    assert records and not any(token in record.raw for record in records)
    run = next(r for r in records if r.argv[:2] == ["docker", "run"])
    assert "--env=HF_TOKEN" in run.argv
    assert "HF_TOKEN" in run.env_names
    (container,) = cluster.containers("sim-b")
    assert container.env_names == ["HF_TOKEN"]
    assert not any(token in line for line in await log_lines(swap.pk))


async def test_it_reattaches_to_a_swap_whose_engine_died_mid_wait(cluster, aclient, settings):
    """The engine's task dies during waiting_healthy; a new engine finishes the swap."""
    cluster.inject("sim-b", slow_start=3)
    first_engine = SwapDispatcher(interval=0.1)
    task = asyncio.create_task(first_engine.run_forever())
    swap_id = (await start_swap(aclient, "qwen3-small")).json()["id"]
    await wait_for_state(swap_id, "waiting_healthy")
    while len(await log_lines(swap_id, "stdout")) < 3:
        await asyncio.sleep(0.05)
    task.cancel()  # the process "dies": nothing is cleaned up, nothing recorded
    await asyncio.gather(task, return_exceptions=True)
    assert (await swap_row(swap_id)).state == "waiting_healthy"

    second_engine = SwapDispatcher(interval=0.1)
    task = asyncio.create_task(second_engine.run_forever())
    try:
        swap = await wait_for_state(swap_id, FINAL, timeout=20)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert swap.state == "complete", swap.error
    assert (await transitions(swap_id)).count("launching") == 1
    runs = [argv for argv in docker_commands(cluster, "sim-b") if argv[1] == "run"]
    assert len(runs) == 1
    # The log has every line the container printed, once.
    (container,) = cluster.containers("sim-b")
    stdout_path, _ = cluster.hosts["sim-b"].daemon.log_paths(container)
    printed = stdout_path.read_text().splitlines()
    stored = await log_lines(swap_id, "stdout")
    assert stored == printed[: len(stored)]
    assert len(stored) >= printed.index("INFO:     Application startup complete.") + 1
    assert any(
        "resuming this swap in state waiting_healthy" in line for line in await log_lines(swap_id)
    )


async def test_it_fails_preflight_naming_acceptenv_with_a_token_and_a_stock_sshd(
    cluster, dispatcher, aclient, settings
):
    settings.ARBITER_HF_TOKEN = "hf_SECRETtoken1234567890"
    swap = await swap_and_wait(aclient, "qwen3-small")
    assert swap.state == "failed"
    assert "hub_token" in swap.error and "AcceptEnv HF_TOKEN" in swap.error
    assert not any(argv[1] == "run" for argv in docker_commands(cluster, "sim-b"))
