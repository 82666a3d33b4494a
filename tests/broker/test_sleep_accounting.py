"""vLLM's sleep as it really behaves, in the planner and the broker's route calls.

Level-1 sleep offloads the weights to CPU RAM and discards the KV cache (docs.vllm.ai,
"Sleep Mode"). On a unified-memory host (GB10) CPU RAM is the same pool: an asleep vLLM
still holds its weights, and sleeping one frees only the rest. On discrete GPUs sleeping
frees the GPU memory but needs host RAM for the weights. And sleep on unified memory is
only used for models that opt in (wake-up crashes: vllm-project/vllm#50011).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from arbiter.broker.limits import ActivitySnapshot
from arbiter.broker.loading import plan_load
from arbiter.broker.planner import HostMemory, Incoming, Resident, plan_eviction
from arbiter.broker.state import get_state
from arbiter.broker.table import read_route_table
from arbiter.models import GpuSample, Host, Service, Swap
from tests.broker.conftest import catalog_model, register

GB10 = HostMemory("spark", budget_mib=120_000, margin_mib=0, unified=True)
RTX = HostMemory("ws", budget_mib=120_000, margin_mib=0, ram_free_mib=64_000)


def sleeper(vram: int = 60_000, keeps: int = 40_000, **fields) -> Resident:
    """An idle vLLM with sleep mode: `vram` held awake, `keeps` of it the weights."""
    return Resident("vllm-b", vram, keeps_mib=keeps, **fields)


# -- the planner (plain values) ------------------------------------------------------------
def test_it_frees_only_the_kv_cache_of_a_vllm_put_to_sleep_on_unified_memory():
    residents = [Resident("vllm-a", 0, replaced=True), sleeper()]
    # 60 GB free; sleeping vllm-b gives back 20 GB (its KV cache), not 60.
    assert plan_eviction(GB10, residents, Incoming("vllm-a", 80_000)).evict == ("vllm-b",)
    too_big = plan_eviction(GB10, residents, Incoming("vllm-a", 90_000))
    assert not too_big.fits and too_big.free_after_mib == 80_000


def test_it_frees_the_gpu_memory_of_a_vllm_put_to_sleep_on_discrete_gpus():
    residents = [Resident("vllm-a", 0, replaced=True), sleeper()]
    plan = plan_eviction(RTX, residents, Incoming("vllm-a", 110_000))
    assert plan.fits and plan.evict == ("vllm-b",) and plan.free_after_mib == 120_000


def test_it_puts_a_vllm_on_discrete_gpus_to_sleep_only_when_host_ram_takes_its_weights():
    residents = [Resident("vllm-a", 0, replaced=True), sleeper()]
    short_of_ram = HostMemory("ws", budget_mib=120_000, ram_free_mib=30_000)
    plan = plan_eviction(short_of_ram, residents, Incoming("vllm-a", 110_000))
    assert not plan.fits and plan.evict == ()


def test_it_frees_everything_anywhere_for_a_backend_that_unloads_for_real():
    residents = [Resident("vllm-a", 0, replaced=True), Resident("ollama", 60_000)]
    for host in (GB10, RTX):
        assert plan_eviction(host, residents, Incoming("vllm-a", 110_000)).fits


# -- what the broker reads from the database ----------------------------------------------
pytestmark_db = pytest.mark.django_db(transaction=True)


def spark_with_sleeper(opted_in: bool = False) -> None:
    """A GB10 host: the swap slot, and a second vLLM (sleep mode) holding a 40 GB model."""
    register("vllm-a", "http://127.0.0.1:9", host="spark", loaded_model="", health="unknown")
    register(
        "vllm-b",
        "http://127.0.0.1:9",
        host="spark",
        loaded_model="big",
        unload_route="/sleep",
        load_route="/wake_up",
    )
    Host.objects.filter(name="spark").update(vram_budget_mib=120_000, vram_margin_mib=0)
    GpuSample.objects.create(host=Host.objects.get(name="spark"), index=0, unified_memory=True)
    catalog_model("big", "big", estimated_vram_mib=40_000, sleep_on_unified_memory=opted_in)
    catalog_model("mid", "mid", estimated_vram_mib=50_000)


@pytestmark_db
def test_it_counts_an_asleep_vllm_as_still_holding_its_weights_on_unified_memory(transactional_db):
    spark_with_sleeper()
    Service.objects.filter(name="vllm-b").update(unloaded_at=timezone.now())
    step = plan_load("mid", ActivitySnapshot())
    assert step.action == "go" and step.plan.free_mib == 80_000  # 120 − its 40 GB weights


@pytestmark_db
def test_it_counts_an_asleep_vllm_as_holding_no_gpu_memory_on_discrete_gpus(transactional_db):
    spark_with_sleeper()
    GpuSample.objects.all().delete()
    GpuSample.objects.create(host=Host.objects.get(name="spark"), index=0, memory_total_mib=120_000)
    Service.objects.filter(name="vllm-b").update(unloaded_at=timezone.now())
    step = plan_load("mid", ActivitySnapshot())
    assert step.action == "go" and step.plan.free_mib == 120_000


def launched_with(utilization: float) -> None:
    """vllm-b's container was started by a swap asking for `utilization` of the pool."""
    Host.objects.filter(name="spark").update(mem_total_mib=120_000)
    Swap.objects.create(
        model_key="big",
        host=Host.objects.get(name="spark"),
        service=Service.objects.get(name="vllm-b"),
        state=Swap.COMPLETE,
        finished_at=timezone.now(),
        launch_argv=["docker", "run", "img", f"--gpu-memory-utilization={utilization}"],
    )


@pytestmark_db
@pytest.mark.parametrize("opted_in", [False, True])
def test_it_puts_a_vllm_on_unified_memory_to_sleep_only_when_its_model_opts_in(
    transactional_db, opted_in
):
    spark_with_sleeper(opted_in=opted_in)
    launched_with(0.5)  # it claims 60 GB of the pool: 40 GB weights, 20 GB KV cache
    catalog_model("huge", "huge", estimated_vram_mib=75_000)
    if not opted_in:
        with pytest.raises(Exception) as caught:
            plan_load("huge", ActivitySnapshot())
        assert getattr(caught.value, "error_type", "") == "insufficient_vram"
        return
    step = plan_load("huge", ActivitySnapshot())
    assert step.plan.free_mib == 60_000 and [e.service for e in step.evict] == ["vllm-b"]
    assert step.plan.free_after_mib == 80_000  # only its KV cache came back


@pytestmark_db
def test_it_gives_the_routing_table_unified_hosts_and_what_each_process_unloaded(transactional_db):
    spark_with_sleeper(opted_in=True)
    at = timezone.now()
    Service.objects.filter(name="vllm-b").update(unloaded_at=at)
    services = {s.name: s for s in read_route_table().services}
    assert services["vllm-b"].unified_memory and services["vllm-b"].unloaded_at == at
    assert services["vllm-a"].unloaded_at is None
    [big] = [e for e in read_route_table().catalog if e.key == "big"]
    assert big.sleep_on_unified_memory


# -- route calls with a method and a JSON body (Ollama) ------------------------------------
class Recorder(ThreadingHTTPServer):
    """A generic backend that records every call: method, path, content type, body."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Recording)
        self.calls: list[tuple[str, str, str, object]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Recording(BaseHTTPRequestHandler):
    server: Recorder

    def _record(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.loads(raw) if raw else None
        self.server.calls.append(
            (self.command, self.path, self.headers.get("Content-Type") or "", body)
        )
        payload = b'{"done": true, "done_reason": "unload"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_POST = do_PUT = do_DELETE = _record  # noqa: N815 (http.server naming)

    def do_GET(self) -> None:  # noqa: N802
        self._record()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def ollama():
    server = Recorder()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytestmark_db
async def test_it_unloads_and_reloads_ollama_with_its_method_and_json_body(
    aclient, ollama, settings
):
    unload = {"model": "llama3.2", "keep_alive": 0}
    await sync_to_async(register)(
        "ollama",
        ollama.url,
        kind="http",
        unload_route="/api/generate",
        unload_body=unload,
        load_route="/api/generate",
        load_method="POST",
        load_body={"model": "llama3.2"},
    )
    state = get_state()
    table = await state.table.get()
    [service] = [s for s in table.services if s.name == "ollama"]
    unloaded = await state.residency.unload(
        service.name,
        service.url(service.unload_route),
        "eviction",
        service.unload_method,
        service.unload_body,
    )
    assert unloaded
    assert ollama.calls == [("POST", "/api/generate", "application/json", unload)]

    state.table.invalidate()
    [service] = [s for s in (await state.table.get()).services if s.name == "ollama"]
    assert service.unloaded_at is not None
    await state.residency.ensure_loaded(service)
    assert ollama.calls[-1] == ("POST", "/api/generate", "application/json", {"model": "llama3.2"})
    row = await sync_to_async(Service.objects.get)(name="ollama")
    assert row.unloaded_at is None
