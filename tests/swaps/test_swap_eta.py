"""The launch ETA from earlier swaps, the phase in `GET /api/swap/{id}` and the swap panel,
and reading a model's `--api-key` (rows only, no cluster)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from arbiter.engine.served_auth import model_api_key
from arbiter.models import Host, Swap
from dashboard.panels.swaps import swap_panel

pytestmark = pytest.mark.django_db


def make_swap(host: Host, state: str, durations: dict | None = None, **fields) -> Swap:
    now = timezone.now()
    final = state in Swap.FINAL_STATES
    return Swap.objects.create(
        model_key=fields.pop("model_key", "qwen3"),
        host=host,
        state=state,
        phase_durations=durations or {},
        finished_at=now if final else None,
        **fields,
    )


@pytest.fixture
def host() -> Host:
    return Host.objects.create(name="spark-1", address="10.0.0.1")


def test_it_gives_no_estimate_for_the_first_swap(host):
    swap = make_swap(host, Swap.LAUNCHING, phase="pull", phase_started_at=timezone.now())
    assert swap.eta_seconds() is None
    progress = swap.launch_progress()
    assert progress.phase == "pull" and progress.phase_label == "pulling the image"


def test_it_is_the_median_of_the_phase_and_the_later_ones_minus_the_time_spent(host):
    for pull, load in ((500, 100), (700, 120), (600, 300)):
        make_swap(host, Swap.COMPLETE, {"pull": pull, "weights": 50, "load": load})
    make_swap(host, Swap.FAILED, {"pull": 9999, "load": 9999})  # failed: not counted
    other = Host.objects.create(name="spark-2", address="10.0.0.2")
    make_swap(other, Swap.COMPLETE, {"pull": 1, "load": 1})  # another host: not counted
    make_swap(host, Swap.COMPLETE, {"load": 1}, model_key="other")  # another model
    now = timezone.now()
    pulling = make_swap(
        host, Swap.LAUNCHING, phase="pull", phase_started_at=now - timedelta(seconds=100)
    )
    # median pull 600 − 100 spent + median weights 50 + median load 120
    assert pulling.eta_seconds(now) == 670.0
    pulling.state, pulling.phase = Swap.WAITING_HEALTHY, "load"
    pulling.phase_started_at = now - timedelta(seconds=500)
    assert pulling.eta_seconds(now) == 0.0  # past the median: never negative


def test_it_gives_no_eta_for_a_finished_swap(host):
    make_swap(host, Swap.COMPLETE, {"load": 60})
    done = make_swap(host, Swap.COMPLETE, {"load": 50})
    assert done.eta_seconds() is None


def test_it_is_carried_in_the_api_with_the_phase_and_elapsed_time(host, key_client):
    make_swap(host, Swap.COMPLETE, {"load": 90})
    started = timezone.now() - timedelta(seconds=30)
    swap = make_swap(host, Swap.WAITING_HEALTHY, phase="load", phase_started_at=started)
    body = key_client.get(f"/api/swap/{swap.pk}").json()
    assert body["phase"] == "load"
    assert body["phase_label"] == "loading"
    assert 30 <= body["phase_elapsed_seconds"] < 40
    assert 50 < body["eta_seconds"] <= 60
    assert body["phase_durations"] == {}
    listed = key_client.get("/api/swaps").json()
    assert [s["phase"] for s in listed] == ["load", None]


def test_it_is_shown_with_the_phase_in_the_swap_panel(host):
    swap = make_swap(host, Swap.LAUNCHING, phase="pull", phase_started_at=timezone.now())
    html = swap_panel()
    assert 'data-phase="pull"' in html
    assert "pulling the image" in html and "no estimate yet" in html
    make_swap(host, Swap.COMPLETE, {"pull": 400, "load": 200}, model_key="m2")
    Swap.objects.filter(pk=swap.pk).update(model_key="m2")
    assert "about 10 min left" in swap_panel()


@pytest.mark.parametrize(
    ("flags", "container_args", "key"),
    [
        (["--api-key=k1"], [], "k1"),
        (["--api-key", "k1", "k2"], [], "k1"),
        (["--api_key=k1", "--api-key=k3"], [], "k3"),  # argparse keeps the last
        (["--enable-prefix-caching"], [], ""),
        ([], ["--env=VLLM_API_KEY=k4"], "k4"),
        (["--api-key=k1"], ["--env=VLLM_API_KEY=k4"], "k1"),  # the flag wins, as in vLLM
    ],
)
def test_it_reads_the_key_from_the_flags_like_vllm_reads_them(flags, container_args, key):
    assert model_api_key(flags, container_args) == key
