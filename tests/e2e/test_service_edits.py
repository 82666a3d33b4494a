"""Enabling and disabling a service from the dashboard, and the edit surviving a restart.

In a real browser against `manage.py serve` and its simulated cluster: the simulator's
inventory lists `sim-b-tts` as disabled, so it starts without a tile, named in the
"Disabled" line under the service tiles.
"""

import pytest
from playwright.sync_api import expect

from tests.e2e.pictures import picture

pytestmark = pytest.mark.e2e

SERVICE = "sim-b-tts"
# The action answers with the panel and pushes it to every dashboard at once; polls would
# take up to 5 s more.
PUSH_MS = 5000


def endpoint(page, url: str) -> dict:
    endpoints = page.request.get(f"{url}/api/endpoints").json()
    return next(e for e in endpoints if e["name"] == SERVICE)


def test_it_keeps_a_service_enabled_from_the_dashboard_enabled_after_a_restart(
    live_arbiter, logged_in_page, new_admin_context, artifacts
):
    page = logged_in_page
    watcher = new_admin_context().new_page()  # a second viewer, who clicks nothing
    watcher.goto(live_arbiter.url + "/")
    watcher.locator("body.ws-live").wait_for(timeout=10000)
    disabled_entry = page.locator(f"#service-disabled-{SERVICE}")
    expect(disabled_entry).to_be_visible()
    expect(page.locator(f"#service-{SERVICE}")).to_have_count(0)

    disabled_entry.get_by_role("button", name="Enable").click()

    for viewer in (page, watcher):
        expect(viewer.locator(f"#service-{SERVICE}")).to_be_visible(timeout=PUSH_MS)
        expect(viewer.locator(f"#service-disabled-{SERVICE}")).to_have_count(0)
    expect(page.locator("#services-error")).to_be_empty()
    assert endpoint(page, live_arbiter.url)["disabled"] is False
    picture(page, "#services-panel", artifacts / "service-enabled.png")

    # kill -9 and start again: serve reloads the simulator's cluster file, which still
    # says `disabled: true`; the dashboard's edit wins.
    live_arbiter.kill_and_restart()
    page.goto(live_arbiter.url + "/")
    expect(page.locator(f"#service-{SERVICE}")).to_be_visible()
    assert endpoint(page, live_arbiter.url)["disabled"] is False

    # Disabling it again (with the confirmation) returns it to the file's value.
    dialogs: list[str] = []

    def accept(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.locator(f"#service-{SERVICE}").get_by_role("button", name="Disable").click()
    expect(page.locator(f"#service-disabled-{SERVICE}")).to_be_visible(timeout=PUSH_MS)
    expect(page.locator(f"#service-{SERVICE}")).to_have_count(0)
    assert dialogs and dialogs[0].startswith(f"Disable {SERVICE}?")
    assert endpoint(page, live_arbiter.url)["disabled"] is True


def test_it_changes_nothing_when_the_confirmation_is_dismissed(live_arbiter, logged_in_page):
    page = logged_in_page
    tile = page.locator("#service-sim-b-vllm")
    expect(tile).to_be_visible()
    page.once("dialog", lambda dialog: dialog.dismiss())
    tile.get_by_role("button", name="Disable").click()
    page.wait_for_timeout(1000)
    expect(tile).to_be_visible()
    endpoints = page.request.get(f"{live_arbiter.url}/api/endpoints").json()
    assert next(e for e in endpoints if e["name"] == "sim-b-vllm")["disabled"] is False
