"""A newcomer's first minute: log in with the printed password and see every host."""

import re

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.e2e


def test_it_logs_in_and_shows_every_simulated_host(log_in, page, artifacts):
    log_in(page)  # through the form, after being sent to /login/ from the dashboard

    for name in ("sim-a", "sim-b", "sim-gb10"):
        card = page.locator(f"#host-{name}")
        card.wait_for()
        assert "simulated" in card.inner_text()
    # Readings arrive over SSH within a few ticks and are pushed to the page.
    expect(page.locator("#gpu-sim-a-0 td.util")).to_have_text(re.compile(r"\d+%"), timeout=15000)
    expect(page.locator("#gpu-sim-gb10-0 td.mem")).to_contain_text("unified", timeout=15000)
    page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)


def test_it_refuses_a_wrong_password(live_arbiter, page):
    page.goto(live_arbiter.url + "/login/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    assert page.locator("[role=alert]").inner_text() == "Wrong username or password."
