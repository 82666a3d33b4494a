"""An orphaned container on the dashboard, removed by an admin, in a real browser.

The container is started through the simulator's control API behind Arbiter's back,
labelled as Arbiter's (`arbiter.managed=true`); a scan (`GET /api/hosts/sim-b/orphans`,
as the engine's periodic scan does) lists it on every open dashboard's host card, and
the card's Remove button (with its confirmation) removes it on the host."""

import pytest
from playwright.sync_api import expect

from tests.helpers import free_port

pytestmark = pytest.mark.e2e

PUSH_MS = 10000


def test_it_lists_an_orphan_on_the_host_card_and_an_admin_removes_it(
    live_arbiter, logged_in_page, simulator
):
    page = logged_in_page
    simulator._post(
        "/hosts/sim-b/containers",
        {
            "name": "arbiter-stray",
            "image": "vllm/vllm-openai:latest",
            "port": free_port(),
            "gpu_memory_utilization": 0.1,
            "labels": ["arbiter.managed=true", "arbiter.model=forgotten"],
        },
    )
    scan = page.request.get(f"{live_arbiter.url}/api/hosts/sim-b/orphans").json()
    assert [o["name"] for o in scan["orphans"]] == ["arbiter-stray"]
    orphan = page.locator("#orphan-sim-b-arbiter-stray")
    expect(orphan).to_be_visible(timeout=PUSH_MS)

    dialogs: list[str] = []

    def accept(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    orphan.get_by_role("button", name="Remove").click()

    expect(page.locator("#orphan-sim-b-arbiter-stray")).to_have_count(0, timeout=PUSH_MS)
    assert dialogs and "arbiter-stray" in dialogs[0]
    names = [
        c["name"]
        for c in simulator.http.get(f"{simulator.url}/hosts/sim-b/containers").json()["containers"]
    ]
    assert "arbiter-stray" not in names
