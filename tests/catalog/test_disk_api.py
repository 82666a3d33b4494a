"""Disk status per host, hub download (Server-Sent Events) and delete, on the simulator."""

import time

import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings

from tests.catalog.conftest import acreate_hub, acreate_local, parse_sse

pytestmark = pytest.mark.django_db(transaction=True)
TOKEN = "hf_sEcReT_tOkEn_1234567890"
CACHE = "/home/arbiter/.cache/huggingface/hub"  # the SSH user's, learned over SSH
# `hf` is not on a non-interactive SSH PATH by default: the CLI runs as a module.
HF = ["python3", "-m", "huggingface_hub.cli.hf"]


def downloads(commands) -> list:
    return [c for c in commands if "download" in c.argv]


async def test_it_reports_present_absent_and_size_per_host(sim_hosts, aclient):
    sim_hosts.hosts["sim-a"].fs.add_file("/models/team/run-1/model.safetensors", size=3000)
    sim_hosts.hosts["sim-a"].fs.add_file("/models/team/run-1/config.json", content=b"{}")
    await acreate_local("ft", "/models/team/run-1")

    response = await aclient.get("/api/models/ft/disk")

    assert response.status_code == 200
    by_host = {entry["host"]: entry for entry in response.json()}
    assert set(by_host) == {"sim-a", "sim-b", "sim-gb10"}
    assert by_host["sim-a"] == {
        "host": "sim-a",
        "path": "/models/team/run-1",
        "present": True,
        "size_bytes": 4096 + 3000 + 2,  # the directory, the weights, "{}"
        "detail": "",
        "error": None,
    }
    assert by_host["sim-b"]["present"] is False
    assert by_host["sim-b"]["size_bytes"] is None
    assert by_host["sim-b"]["detail"] == "not found"
    # Asked with argv lists: realpath first, then du on the resolved path.
    argvs = [c.argv for c in sim_hosts.commands("sim-a") if c.argv[:1] in (["realpath"], ["du"])]
    assert argvs[-2:] == [
        ["realpath", "-e", "--", "/models/team/run-1"],
        ["du", "-sb", "--", "/models/team/run-1"],
    ]


async def test_it_reports_an_unreachable_host_as_an_entry_with_an_error(sim_hosts, aclient):
    await acreate_hub("qwen")
    sim_hosts.go_down("sim-gb10")

    response = await aclient.get("/api/models/qwen/disk")

    assert response.status_code == 200
    by_host = {entry["host"]: entry for entry in response.json()}
    down = by_host["sim-gb10"]
    assert (down["present"], down["size_bytes"]) == (None, None)
    assert down["error"].startswith("host_unreachable: sim-gb10")
    assert by_host["sim-a"]["error"] is None
    assert by_host["sim-a"]["path"] == f"{CACHE}/models--Qwen--Qwen3-0.6B"


async def test_it_answers_404_for_an_unknown_model(sim_hosts, aclient):
    response = await aclient.get("/api/models/nope/disk")
    assert response.status_code == 404
    assert response.json()["error"]["field"] == "key"


async def _download(aclient, key: str, host: str) -> tuple[list[tuple[str, dict]], list[float]]:
    response = await aclient.post(f"/api/models/{key}/download?host={host}")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    chunks, arrivals = [], []
    async for chunk in response.streaming_content:
        chunks.append(chunk.decode() if isinstance(chunk, bytes) else chunk)
        arrivals.append(time.monotonic())
    return parse_sse("".join(chunks)), arrivals


@override_settings(ARBITER_HF_TOKEN=TOKEN)
async def test_it_streams_download_progress_and_keeps_the_token_off_the_command_line(
    sim_hosts, aclient
):
    await acreate_hub("gated", hub_repo="acme/gated-llm-1B", served_name="gated")
    sim_hosts.accept_hf_token("sim-b")  # AcceptEnv HF_TOKEN: sshd passes the token on
    sim_hosts.set_sshd("sim-b", hf_on_path=True)

    events, arrivals = await _download(aclient, "gated", "sim-b")

    names = [name for name, _ in events]
    assert names[0] == "start" and names[-1] == "done"
    progress = [data["line"] for name, data in events if name == "progress"]
    assert progress[0].startswith("Fetching 4 files:   0%")
    assert any(line.startswith("Fetching 4 files: 100%") for line in progress)
    # Lines arrive as the host prints them, not in one lump at the end.
    assert arrivals[-1] - arrivals[1] > 0.3
    done = events[-1][1]
    assert done["present"] is True and done["host"] == "sim-b"
    assert done["path"] == f"{CACHE}/models--acme--gated-llm-1B"
    assert done["size_bytes"] > 2_000_000_000  # "1B" parameters in bf16, sparse

    hf = downloads(sim_hosts.commands("sim-b"))
    assert [c.argv for c in hf] == [
        ["hf", "download", "acme/gated-llm-1B", "--cache-dir", CACHE],
    ]
    assert "HF_TOKEN" in hf[0].env_names  # the token travelled in the SSH environment...
    for host in ("sim-a", "sim-b", "sim-gb10"):  # ...and never on any command line
        assert not any(TOKEN in c.raw for c in sim_hosts.commands(host))

    status = await aclient.get("/api/models/gated/disk")
    by_host = {e["host"]: e for e in status.json()}
    assert by_host["sim-b"]["present"] is True and by_host["sim-a"]["present"] is False


async def test_it_passes_the_revision_as_its_own_argument(sim_hosts, aclient):
    await acreate_hub("qwen", hub_revision="refs/pr/3")
    events, _ = await _download(aclient, "qwen", "sim-a")
    assert events[-1][0] == "done"
    hf = [c.argv for c in downloads(sim_hosts.commands("sim-a"))]
    assert hf[-1] == [
        *HF,
        "download",
        "Qwen/Qwen3-0.6B",
        "--revision",
        "refs/pr/3",
        "--cache-dir",
        CACHE,
    ]


@override_settings(ARBITER_HF_TOKEN="")
async def test_it_ends_the_stream_with_an_error_for_a_gated_repo_without_a_token(
    sim_hosts, aclient
):
    await acreate_hub("gated", hub_repo="acme/gated-llm-1B", served_name="gated")
    events, _ = await _download(aclient, "gated", "sim-a")
    name, data = events[-1]
    assert name == "error"
    assert data["type"] == "command_failed" and data["host"] == "sim-a"
    assert "GatedRepoError" in data["message"]
    hf = downloads(sim_hosts.commands("sim-a"))
    assert "HF_TOKEN" not in hf[-1].env_names


async def test_it_ends_the_stream_with_an_error_for_a_missing_repo(sim_hosts, aclient):
    await acreate_hub("ghost", hub_repo="acme/missing-model", served_name="ghost")
    events, _ = await _download(aclient, "ghost", "sim-a")
    assert events[-1][0] == "error"
    assert "Repository Not Found" in events[-1][1]["message"]


async def test_it_refuses_to_download_a_local_model(sim_host_rows, aclient):
    await acreate_local("ft", "/models/team/run-1")
    response = await aclient.post("/api/models/ft/download?host=sim-a")
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "key"


async def test_it_answers_404_for_an_unknown_host(sim_host_rows, aclient):
    await acreate_hub("qwen")
    response = await aclient.post("/api/models/qwen/download?host=nope")
    assert response.status_code == 404
    assert response.json()["error"]["field"] == "host"
    missing = await aclient.post("/api/models/qwen/download")
    assert missing.status_code == 422
    assert missing.json()["error"]["field"] == "host"


async def test_it_deletes_a_hub_model_from_a_hosts_disk(sim_hosts, aclient):
    await acreate_hub("qwen")
    await _download(aclient, "qwen", "sim-a")
    folder = f"{CACHE}/models--Qwen--Qwen3-0.6B"
    assert sim_hosts.hosts["sim-a"].fs.kind(folder) == "dir"

    response = await aclient.delete("/api/models/qwen/disk?host=sim-a")

    assert response.status_code == 204
    assert sim_hosts.hosts["sim-a"].fs.kind(folder) is None
    rm = [c.argv for c in sim_hosts.commands("sim-a") if c.argv[:1] == ["rm"]]
    assert rm == [["rm", "-rf", "--", folder]]
    status = {e["host"]: e for e in (await aclient.get("/api/models/qwen/disk")).json()}
    assert status["sim-a"]["present"] is False


async def test_it_never_deletes_a_local_model(sim_hosts, aclient):
    sim_hosts.hosts["sim-a"].fs.add_file("/models/team/run-1/model.safetensors", size=10)
    await acreate_local("ft", "/models/team/run-1")

    response = await aclient.delete("/api/models/ft/disk?host=sim-a")

    assert response.status_code == 422
    assert response.json()["error"]["message"].endswith(
        "applies to hub models only (local models are never downloaded or deleted by Arbiter)"
    )
    assert sim_hosts.hosts["sim-a"].fs.kind("/models/team/run-1") == "dir"
    assert not any(c.argv[:1] == ["rm"] for c in sim_hosts.commands("sim-a"))


async def test_it_refuses_to_delete_files_a_host_is_serving(sim_host_rows, aclient):
    from asgiref.sync import sync_to_async

    from arbiter.models import Service

    await acreate_hub("qwen")
    await sync_to_async(Service.objects.filter(name="sim-a-vllm").update)(
        loaded_model="Qwen/Qwen3-0.6B"
    )
    response = await aclient.delete("/api/models/qwen/disk?host=sim-a")
    assert response.status_code == 409
    assert response.json()["error"]["field"] == "host"


async def test_it_reports_the_cache_size_while_the_download_is_quiet(
    sim_hosts, aclient, monkeypatch
):
    # Real `hf` draws its bars on stderr: between stdout lines the folder size is shown.
    monkeypatch.setattr("arbiter.engine.disk.PROGRESS_POLL_SECONDS", 0.05)
    await acreate_hub("qwen")
    events, _ = await _download(aclient, "qwen", "sim-a")
    lines = [data["line"] for name, data in events if name == "progress"]
    assert any(line.startswith("downloaded so far: ") for line in lines)
    assert events[-1][0] == "done"


@override_settings(ARBITER_HF_TOKEN=TOKEN)
async def test_it_fails_a_gated_download_when_sshd_drops_the_token(sim_hosts, aclient):
    # Stock sshd_config (AcceptEnv LANG LC_*): HF_TOKEN is sent, and silently dropped.
    await acreate_hub("gated", hub_repo="acme/gated-llm-1B", served_name="gated")
    events, _ = await _download(aclient, "gated", "sim-a")
    assert events[-1][0] == "error"
    assert "GatedRepoError" in events[-1][1]["message"]
    hf = downloads(sim_hosts.commands("sim-a"))[-1]
    assert (hf.env_names, hf.env_dropped) == ([], ["HF_TOKEN"])


async def test_it_fails_a_download_when_neither_hf_nor_its_module_is_there(sim_hosts, aclient):
    sim_hosts.set_sshd("sim-a", hf_on_path=False, hub_module=False)
    await acreate_hub("qwen")
    events, _ = await _download(aclient, "qwen", "sim-a")
    assert events[-1][0] == "error"
    assert "No module named huggingface_hub" in events[-1][1]["message"]


async def test_it_prefers_an_inventory_cache_dir_over_the_setting(sim_hosts, aclient, settings):
    from arbiter.models import Host

    settings.ARBITER_HF_CACHE_DIR = "/models/shared-cache"
    await sync_to_async(Host.objects.filter(name="sim-b").update)(hf_cache_dir="/models/hub-b")
    await acreate_hub("qwen")
    by_host = {e["host"]: e for e in (await aclient.get("/api/models/qwen/disk")).json()}
    assert by_host["sim-b"]["path"] == "/models/hub-b/models--Qwen--Qwen3-0.6B"
    assert by_host["sim-a"]["path"] == "/models/shared-cache/models--Qwen--Qwen3-0.6B"
