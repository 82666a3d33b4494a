"""Swap, Host, Service and CatalogModel behaviour on the models and their querysets:
elapsed time, progress, the launch phase, the one shape, and lookups that name the field."""

from datetime import timedelta

import pytest
from django.utils import timezone

from arbiter.errors import NotFound
from arbiter.models import Host, Service, Swap, SwapHost, SwapLogLine, SwapTransition
from catalog.models import CatalogModel

pytestmark = pytest.mark.django_db


@pytest.fixture
def host() -> Host:
    return Host.objects.create(name="spark-1", address="10.0.0.1")


def make_swap(host: Host, state: str = Swap.PENDING, **fields) -> Swap:
    return Swap.objects.create(
        model_key=fields.pop("model_key", "qwen3"), host=host, state=state, **fields
    )


def enter(swap: Swap, *states: str) -> None:
    for offset, state in enumerate(states):
        SwapTransition.objects.create(
            swap=swap, state=state, at=swap.created_at + timedelta(seconds=offset + 1)
        )


def test_it_counts_elapsed_time_from_the_request_to_the_end(host):
    swap = make_swap(host, Swap.LAUNCHING)
    swap.started_at = swap.created_at + timedelta(seconds=5)  # the claim does not count
    assert swap.elapsed_seconds(swap.created_at + timedelta(seconds=12.5)) == 12.5
    swap.finished_at = swap.created_at + timedelta(seconds=20)
    assert swap.elapsed_seconds(swap.created_at + timedelta(hours=1)) == 20.0
    assert swap.elapsed_seconds(swap.created_at - timedelta(seconds=3)) == 20.0
    swap.finished_at = None
    assert swap.elapsed_seconds(swap.created_at - timedelta(seconds=3)) == 0.0  # never negative


def test_it_measures_progress_along_the_successful_path(host):
    swap = make_swap(host, Swap.STOPPING)
    assert Swap.objects.for_display().get(pk=swap.pk).progress == 0.0  # no transitions yet
    enter(swap, Swap.PENDING, Swap.PREFLIGHT, Swap.STOPPING)
    shown = Swap.objects.for_display().get(pk=swap.pk)
    assert shown.reached_phase == Swap.STOPPING
    assert shown.progress == 0.4
    enter(swap, Swap.FAILED)  # a failure keeps how far it got
    assert Swap.objects.for_display().get(pk=swap.pk).progress == 0.4
    assert make_swap(Host.objects.create(name="h2", address="x"), Swap.COMPLETE).progress == 1.0


def test_it_reports_the_launch_phase_its_time_and_no_estimate_without_history(host):
    now = timezone.now()
    swap = make_swap(
        host, Swap.LAUNCHING, phase=Swap.PULL, phase_started_at=now - timedelta(seconds=30)
    )
    launch = swap.launch_progress(now)
    assert launch.phase == "pull" and launch.phase_label == "pulling the image"
    assert launch.phase_elapsed_seconds == 30.0
    assert launch.eta_seconds is None
    assert swap.eta_seconds(now) is None


def test_it_estimates_from_complete_swaps_of_the_model_on_the_host(host):
    for load in (60, 90, 120):
        make_swap(host, Swap.COMPLETE, phase_durations={"load": load}, finished_at=timezone.now())
    now = timezone.now()
    swap = make_swap(
        host, Swap.WAITING_HEALTHY, phase=Swap.LOAD, phase_started_at=now - timedelta(seconds=40)
    )
    assert swap.eta_seconds(now) == 50.0  # median 90 − 40 spent
    assert len(Swap.objects.launch_history(swap)) == 3


def test_it_gives_one_shape_for_the_api_and_the_dashboard(host):
    service = Service.objects.create(name="vllm-1", host=host, base_url="http://x:8000")
    swap = make_swap(host, Swap.PREFLIGHT, service=service, requested_by="alice")
    SwapHost.objects.create(swap=swap, host=host, node_rank=0)
    enter(swap, Swap.PENDING, Swap.PREFLIGHT)
    shown = Swap.objects.for_display().get(pk=swap.pk).as_dict()
    assert shown["id"] == swap.pk
    assert shown["model"] == "qwen3"
    assert shown["host"] == "spark-1" and shown["hosts"] == ["spark-1"]
    assert shown["service"] == "vllm-1"
    assert shown["state"] == "preflight" and shown["final"] is False
    assert shown["progress"] == 0.2
    assert shown["phase"] is None and shown["phase_durations"] == {}
    assert shown["url"] == f"/api/swap/{swap.pk}"
    detail = Swap.objects.for_display().get(pk=swap.pk).as_detail_dict()
    assert [t["state"] for t in detail["transitions"]] == ["pending", "preflight"]
    assert detail["log_lines"] == 0
    assert detail["stream_url"] == f"/api/swap/{swap.pk}/stream"
    assert detail["log_url"] == f"/api/swap/{swap.pk}/log"


def test_it_names_the_head_alone_before_the_swap_holds_its_hosts(host):
    swap = make_swap(host)
    assert swap.host_names() == ["spark-1"]


def test_it_shapes_a_log_line(host):
    swap = make_swap(host)
    line = SwapLogLine.objects.create(swap=swap, seq=1, stream="stderr", text="boom", node="a")
    assert line.as_dict() == {
        "seq": 1,
        "at": line.at,
        "stream": "stderr",
        "text": "boom",
        "node": "a",
    }


def test_it_filters_swaps_in_flight_finished_and_on_a_host(host):
    other = Host.objects.create(name="spark-2", address="10.0.0.2")
    running = make_swap(host, Swap.LAUNCHING)
    done = make_swap(other, Swap.COMPLETE)
    assert list(Swap.objects.in_flight()) == [running]
    assert list(Swap.objects.finished()) == [done]
    assert list(Swap.objects.on_host("spark-2")) == [done]
    assert list(Swap.objects.newest_first()) == [done, running]


def test_it_looks_rows_up_naming_the_field_when_missing(host):
    assert Host.objects.by_name("spark-1") == host
    with pytest.raises(NotFound) as missing_host:
        Host.objects.by_name("nope")
    assert missing_host.value.field == "host"
    assert missing_host.value.message == "no host named 'nope' in the inventory"
    Host.objects.filter(pk=host.pk).update(in_inventory=False)
    with pytest.raises(NotFound):
        Host.objects.by_name("spark-1")  # dropped from the inventory

    with pytest.raises(NotFound) as missing_model:
        CatalogModel.objects.by_key("gone", field="key")
    assert missing_model.value.field == "key"
    assert missing_model.value.message == "no catalog model with key 'gone'"

    with pytest.raises(NotFound) as missing_swap:
        Swap.objects.by_id(404)
    assert missing_swap.value.field == "swap_id"


def test_it_finds_the_vllm_service_a_swap_replaces(host):
    Service.objects.create(name="b-http", host=host, kind=Service.KIND_HTTP, base_url="http://x")
    Service.objects.create(name="c-off", host=host, base_url="http://x", disabled=True)
    wanted = Service.objects.create(name="d-vllm", host=host, base_url="http://x")
    assert Service.objects.vllm_on(host) == wanted
    Service.objects.filter(pk=wanted.pk).update(in_inventory=False)
    assert Service.objects.vllm_on(host) is None
