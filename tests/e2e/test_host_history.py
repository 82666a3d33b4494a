"""A host card's plots in a real browser: large enough to read, kept current by the
pushed card, and a click opens the host's history page with its GPUs drawn wide."""

import re

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.e2e


def size_of(page, selector: str) -> dict:
    """Measured in one step: a pushed card replaces its plots every tick, so a handle
    held across two steps may be gone by the second."""
    return page.evaluate(
        "s => { const r = document.querySelector(s).getBoundingClientRect();"
        " return {width: r.width, height: r.height}; }",
        selector,
    )


def test_it_opens_the_hosts_history_from_a_cards_plots(
    live_arbiter, simulator, logged_in_page, artifacts
):
    page = logged_in_page
    expect(page.locator("#host-sim-a")).to_have_attribute("data-state", "live", timeout=10000)
    simulator.set_gpu("sim-a", 0, utilization=63)
    # The newest reading comes with the pushed card, next to the series' key.
    plot = page.locator("#plot-sim-a-0")
    expect(plot.locator(".now-util")).to_have_text("63 %", timeout=5000)
    expect(plot.locator(".series-util polyline").first).to_be_attached(timeout=5000)
    box = size_of(page, "#plot-sim-a-0 svg.plot")
    assert box["width"] >= 240 and box["height"] >= 95, box
    expect(plot.locator("text.axis-y")).to_have_text(["0 %", "50 %", "100 %"])
    expect(plot.locator("text.axis-x").first).to_have_text("now")
    expect(plot.locator("text.axis-x").last).to_have_text("−5 min")
    page.screenshot(path=str(artifacts / "dashboard-plots.png"), full_page=True)

    plot.click()  # the card is replaced every tick; the click lands on the newest one
    page.wait_for_url(live_arbiter.url + "/hosts/sim-a/history")
    panel = page.locator("#host-history-sim-a")
    expect(panel).to_contain_text("The last 15 minutes")
    wide = panel.locator("#plot-sim-a-0 svg.plot-wide")
    expect(wide.locator(".series-util circle")).to_be_attached()
    wide_box = size_of(page, "#host-history-sim-a #plot-sim-a-0 svg.plot-wide")
    assert wide_box["width"] >= 800 and wide_box["height"] >= 220, wide_box
    expect(wide.locator("text.axis-x").last).to_have_text("−15 min")
    expect(panel.locator("#plot-sim-a-0 .now-util")).to_have_text(re.compile(r"\d+ %"))
    expect(panel.locator("#plot-sim-a-1")).to_be_visible()  # every GPU of the host
    page.screenshot(path=str(artifacts / "host-history.png"), full_page=True)

    page.locator(".back-link").click()
    page.wait_for_url(live_arbiter.url + "/")
    expect(page.locator("#host-sim-a .host-history-link")).to_have_attribute(
        "href", "/hosts/sim-a/history"
    )
