"""A swap started from the catalog page and watched on the dashboard, in a real browser.

Against `manage.py serve` with its simulated cluster (tests/live_arbiter.py): the demo
catalog is seeded and a simulated vLLM container takes the simulator's default start-up
delay (2 s) printing its start-up log, so the waiting_healthy phase is long enough to
watch lines arrive before the swap completes.
"""

import re
import time

import pytest
from playwright.sync_api import expect

from tests.e2e.pictures import picture

pytestmark = pytest.mark.e2e

MODEL, HOST = "smollm2-instruct", "sim-b"
SWAP_DEADLINE_S = 60.0
ORDER = ["pending", "preflight", "stopping", "launching", "waiting_healthy", "complete"]

# What the swap panel shows for the swap of MODEL on HOST, read straight off the DOM.
READ_CARD = """([model, host]) => {
  const card = [...document.querySelectorAll("#swap-current article.swap")].find((c) =>
    c.querySelector(".swap-model").textContent === model &&
    c.querySelector(".swap-host").textContent === host);
  if (!card) return null;
  const lines = [...card.querySelectorAll(".log-line")];
  return {
    id: card.dataset.swapId,
    state: card.dataset.state,
    current: [...card.querySelectorAll(".step-current")].map((s) => s.dataset.phase),
    stdout: lines.filter((l) => l.dataset.stream === "stdout").map((l) => l.textContent),
    lines: lines.length,
    elapsed: card.querySelector(".swap-elapsed").textContent,
    running: card.querySelector(".swap-elapsed").hasAttribute("data-running"),
  };
}"""


def seconds(label: str) -> float:
    """'7.4 s' / '1 min 05 s' -> seconds."""
    match = re.fullmatch(r"(?:(\d+) min )?([\d.]+) s", label.strip())
    assert match, label
    return int(match.group(1) or 0) * 60 + float(match.group(2))


def watch_swap(page, artifacts) -> list[dict]:
    """Snapshots of the swap's card every ~100 ms until it shows a final state."""
    snapshots: list[dict] = []
    pictured = False
    deadline = time.monotonic() + SWAP_DEADLINE_S
    while time.monotonic() < deadline:
        card = page.evaluate(READ_CARD, [MODEL, HOST])
        if card is not None:
            card["t"] = time.monotonic()
            snapshots.append(card)
            if not pictured and card["state"] == "waiting_healthy" and len(card["stdout"]) > 3:
                pictured = True
                shot = artifacts / "swap-panel-running.png"
                picture(page, "#swap-panel", shot)
            if card["state"] in ("complete", "failed", "cancelled"):
                return snapshots
        page.wait_for_timeout(100)
    raise AssertionError(f"the swap did not end within {SWAP_DEADLINE_S} s: {snapshots[-3:]}")


def swap_in(page, url: str, model: str, host: str) -> None:
    """Click "Swap in" on the catalog page; land on the dashboard with its socket open."""
    page.goto(url + "/catalog/")
    card = page.locator(f"#model-{model}")
    card.locator("select[name=host]").select_option(host)
    card.get_by_role("button", name="Swap in").click()
    page.wait_for_url(url + "/")
    expect(page.locator("body")).to_have_class(re.compile(r"\bws-live\b"), timeout=10000)


def test_it_swaps_a_model_in_from_the_catalog_and_watches_it_complete(
    live_arbiter, log_in, page, artifacts
):
    log_in(page)
    swap_in(page, live_arbiter.url, MODEL, HOST)
    page.evaluate("window.__sameDocument = true")  # a reload would drop it

    snapshots = watch_swap(page, artifacts)
    final = snapshots[-1]
    assert final["state"] == "complete", final
    swap_id = final["id"]
    assert {s["id"] for s in snapshots} == {swap_id}

    # The phases it was seen in, in the order of the state machine, ending complete;
    # waiting_healthy (the container's 2 s start-up) is always long enough to be seen.
    seen = list(dict.fromkeys(s["state"] for s in snapshots))
    assert seen == sorted(seen, key=ORDER.index), seen
    assert "waiting_healthy" in seen and seen[-1] == "complete", seen
    # The stepper marks the phase it is in.
    for snapshot in snapshots:
        expected = [] if snapshot["state"] == "complete" else [snapshot["state"]]
        assert snapshot["current"] == expected, snapshot

    # The container's own log lines arrived while it was still starting.
    starting = [s for s in snapshots if s["state"] != "complete"]
    assert any(s["stdout"] for s in starting), starting[-1]
    early = next(s for s in starting if s["stdout"])
    assert any("vLLM API server version" in line for line in early["stdout"]), early
    assert "Application startup complete." in "\n".join(final["stdout"])

    # The elapsed time moved while the swap ran (pushes and the page's own ticker), and
    # never went back.
    running = [s for s in snapshots if s["running"]]
    times = [seconds(s["elapsed"]) for s in running]
    assert times == sorted(times), times
    assert times[-1] - times[0] >= 1.0, times
    # Also between pushes: the same rendered element ticks on its own. The ticker runs
    # every 250 ms and counts from the first tick that sees the element, so after 1.1 s
    # it shows 3 s plus 0.6 to 1.1 s (less only if a busy machine delays its timers).
    page_ticks = page.evaluate("""async () => {
        const el = document.createElement("span");
        el.className = "swap-elapsed"; el.dataset.running = ""; el.dataset.elapsed = "3";
        document.body.append(el);
        await new Promise((r) => setTimeout(r, 1100));
        const text = el.textContent; el.remove(); return text;
    }""")
    assert 3.4 <= seconds(page_ticks) <= 4.5, page_ticks
    assert not final["running"]
    assert seconds(final["elapsed"]) >= 2.0  # it includes the 2 s container start-up

    # The finished swap is in the history; opening it loads its whole log.
    entry = page.locator(f"#swap-past-{swap_id}")
    expect(entry).to_have_attribute("data-state", "complete", timeout=5000)
    expect(entry.locator(".swap-model")).to_have_text(MODEL)
    expect(entry.locator(".swap-host")).to_have_text(HOST)
    entry.locator("summary").click()
    full_log = entry.locator(".swap-full-log")
    expect(full_log).to_contain_text("Application startup complete.", timeout=5000)
    expect(full_log.locator(".log-arbiter").first).to_be_visible()
    expect(full_log.locator('[data-phase="complete"]')).to_have_attribute("data-status", "done")
    assert page.evaluate("window.__sameDocument") is True

    # The API agrees with what the panel showed.
    detail = page.request.get(f"{live_arbiter.url}/api/swap/{swap_id}").json()
    assert [t["state"] for t in detail["transitions"]] == ORDER
    assert detail["state"] == "complete"

    picture(page, "#swap-panel", artifacts / "swap-panel.png")


def test_it_cancels_a_running_swap_and_keeps_an_open_log_open(live_arbiter, logged_in_page):
    page = logged_in_page
    if page.locator("#swap-history details.swap-past").count() == 0:  # run alone: make one
        swap_in(page, live_arbiter.url, MODEL, HOST)
        expect(page.locator("#swap-history details.swap-past")).not_to_have_count(0, timeout=30000)
    swap_in(page, live_arbiter.url, "qwen3-600m", HOST)
    running = page.locator("#swap-current article.swap", has_text="qwen3-600m")
    expect(running).to_have_count(1)
    swap_id = running.get_attribute("data-swap-id")

    # Open the newest finished swap's log while the new one runs.
    earlier = page.locator("#swap-history details.swap-past").first
    earlier_id = earlier.get_attribute("id")
    earlier.locator("summary").click()
    expect(earlier.locator(".swap-full-log")).to_contain_text("→ complete", timeout=5000)
    page.evaluate("(id) => { document.getElementById(id).beforeCancel = true; }", earlier_id)

    card = page.locator(f"#swap-{swap_id}")
    expect(card).to_have_attribute("data-state", "waiting_healthy", timeout=20000)
    card.get_by_role("button", name="Cancel").click()
    expect(card).to_have_attribute("data-state", "cancelled", timeout=10000)
    expect(card.locator('[data-phase="cancelled"]')).to_have_attribute("data-status", "cancelled")
    expect(card.locator(".swap-cancel")).to_have_count(0)
    expect(card.locator(".log-arbiter", has_text="cancel: stopping and removing")).to_have_count(1)

    # Its ending re-rendered the history: the cancelled swap is on top, and the log that
    # was open is open again, its lines fetched again.
    entries = page.locator("#swap-history details.swap-past")
    expect(entries.first).to_have_attribute("id", f"swap-past-{swap_id}", timeout=5000)
    expect(entries.first).to_have_attribute("data-state", "cancelled")
    reopened = page.locator(f"#{earlier_id}")
    assert page.evaluate("(id) => !document.getElementById(id).beforeCancel", earlier_id)
    expect(reopened).to_have_attribute("open", "")
    expect(reopened.locator(".swap-full-log")).to_contain_text("→ complete", timeout=5000)

    detail = page.request.get(f"{live_arbiter.url}/api/swap/{swap_id}").json()
    assert detail["state"] == "cancelled", detail
