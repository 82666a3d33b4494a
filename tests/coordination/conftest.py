"""Webhook tests deliver to real receivers on 127.0.0.1, which the SSRF guard refuses by
default: these tests allow loopback explicitly (test_webhook_ssrf.py sets its own)."""

import pytest


@pytest.fixture(autouse=True)
def _webhooks_may_reach_loopback(settings):
    settings.ARBITER_WEBHOOK_ALLOW_NETWORKS = ["127.0.0.0/8"]
