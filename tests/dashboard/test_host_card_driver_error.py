"""The host card of a reachable host whose GPU driver fails."""

import pytest
from django.test import Client
from django.utils import timezone

from arbiter.models import GpuSample, Host
from dashboard.panels.cluster import host_card

pytestmark = pytest.mark.django_db

MESSAGE = (
    "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 535.161"
)


def _broken_host(driver_error: str = MESSAGE) -> Host:
    now = timezone.now()
    host = Host.objects.create(
        name="spark-1",
        address="10.0.0.1",
        last_sample_at=now,
        mem_total_mib=122_000,
        mem_available_mib=100_000,
        driver_error=driver_error,
    )
    GpuSample.objects.create(host=host, taken_at=now, index=0, name="NVIDIA GB10", uuid="GPU-0")
    return host


def _card(html: str) -> str:
    return html[html.index('id="host-spark-1"') :]


def test_it_shows_the_driver_problem_in_the_tools_words(bob):
    _broken_host()
    client = Client()
    client.force_login(bob)
    html = _card(client.get("/fragments/hosts", headers={"HX-Request": "true"}).content.decode())
    assert 'data-state="driver_error"' in html
    assert '<span class="badge badge-state">driver problem</span>' in html
    assert (
        "GPU driver problem: Failed to initialize NVML: Driver/library version mismatch<br>"
        "NVML library version: 535.161</p>"
    ) in html
    assert "stale" not in html and "offline" not in html
    assert 'id="gpu-spark-1-0"' not in html, "no GPU row from before the fault"
    assert "No GPU readings while nvidia-smi fails" in html


def test_it_says_the_same_on_the_pushed_card_and_escapes_the_message():
    host = _broken_host("No devices were found <script>alert(1)</script>")
    html = host_card(host.pk)
    assert 'hx-swap-oob="true"' in html
    assert "GPU driver problem: No devices were found &lt;script&gt;" in html
    assert "<script>" not in html


def test_it_shows_no_driver_badge_for_a_healthy_host(bob):
    host = _broken_host()
    Host.objects.filter(pk=host.pk).update(driver_error="")
    html = host_card(host.pk)
    assert "badge-driver-error" not in html and "GPU driver problem" not in html
    assert 'data-state="live"' in html and 'id="gpu-spark-1-0"' in html
