"""Downloading a hub model to a host and deleting it again, from the catalog page.

In a real browser against `manage.py serve` and its simulated cluster (tests/live_arbiter.py):
the demo catalog's `bge-small` is on no host's disk at the start, and the simulator's
`hf download` prints its progress bar as whole lines 0.15 s apart (arbiter/simulator/hub.py),
so the page's log shows them arrive while it runs: the buttons are htmx POSTs and the log
polls the server until it answers 286 (dashboard/catalog.py); no hand-written client.
"""

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.pictures import picture

pytestmark = pytest.mark.e2e

MODEL, REPO, HOST = "bge-small", "BAAI/bge-small-en-v1.5", "sim-b"
LOCAL_MODEL = "support-finetune"  # the demo catalog's local model, present on every host
HOSTS = ("sim-a", "sim-b", "sim-gb10")
DISK_MS = 20000  # a disk check is a few SSH commands; generous for a busy 2-core VM
DOWNLOAD_MS = 30000  # the simulated download itself takes ~0.6 s

# What the card's log and the host's row look like each time the card changes (htmx swaps
# the log element itself on each poll, so it is looked up again every time).
WATCH_LOG = """([model, host]) => {
  window.__log = [];
  const card = document.getElementById("model-" + model);
  new MutationObserver(() => {
    const log = card.querySelector(".disk-progress");
    const row = document.querySelector(`#disk-${model} tr[data-host="${host}"]`);
    const button = row && row.querySelector("button.disk-download");
    window.__log.push({
      lines: log.textContent.split("\\n").filter(Boolean).length,
      row: row ? row.className : null,
      disabled: button ? button.disabled : null,
    });
  }).observe(card, { childList: true, characterData: true, subtree: true });
}"""


HF_MODULE = ["python3", "-m", "huggingface_hub.cli.hf"]
CACHE = "/home/arbiter/.cache/huggingface/hub"  # the SSH user's hub cache, the default


def hf_downloads(simulator, host: str) -> list[list[str]]:
    """The hub CLI's download argv lists the simulated host received (`hf` is not on a
    non-interactive PATH by default, so Arbiter runs it as `python3 -m ...`)."""
    commands = simulator.commands(host)["commands"]
    return [argv for c in commands for argv in c["argvs"] if "download" in argv]


def test_it_downloads_a_hub_model_with_progress_and_deletes_it(
    live_arbiter, simulator, log_in, page, artifacts
):
    log_in(page)
    page.goto(live_arbiter.url + "/catalog/")
    card = page.locator(f"#model-{MODEL}")
    row = card.locator(f'#disk-{MODEL} tr[data-host="{HOST}"]')
    expect(row).to_have_class("disk-absent", timeout=DISK_MS)
    assert hf_downloads(simulator, HOST) == []
    log = card.locator("pre.disk-progress")
    expect(log).to_be_hidden()
    page.evaluate(WATCH_LOG, [MODEL, HOST])

    row.get_by_role("button", name="Download").click()

    # The row turns present, with the size of what `hf download` wrote.
    expect(row).to_have_class("disk-present", timeout=DOWNLOAD_MS)
    expect(row.locator("td").nth(0)).to_have_text("present")
    expect(row.locator("td").nth(1)).to_have_text(re.compile(r"^1\.\d\sGB$"))
    expect(row.get_by_role("button", name="Delete from disk")).to_be_enabled()
    expect(card.locator(".disk-error")).to_be_empty()
    # The log kept every progress line, from 0 % to the snapshot folder.
    expect(log).to_be_visible()
    expect(log).to_contain_text(f"Downloading {REPO} to {HOST}")
    expect(log).to_contain_text("Fetching 4 files:   0%")
    expect(log).to_contain_text("Fetching 4 files: 100%")
    expect(log).to_contain_text("/models--BAAI--bge-small-en-v1.5/snapshots/")
    picture(page, f"#model-{MODEL}", artifacts / "catalog-disk-download.png")

    # The lines arrived while the download ran: the log grew in more than one step
    # before the row turned present, and the button stayed disabled meanwhile.
    seen = page.evaluate("window.__log")
    running = [s for s in seen if s["row"] == "disk-absent"]
    assert running, seen
    assert all(s["disabled"] is True for s in running), seen
    assert len({s["lines"] for s in running}) >= 2, seen
    assert seen[-1]["lines"] >= 7, seen  # "Downloading ...", 5 bars, the snapshot folder

    # The host really received one `hf download` into Arbiter's cache, and the API agrees.
    assert hf_downloads(simulator, HOST) == [[*HF_MODULE, "download", REPO, "--cache-dir", CACHE]]
    disk = page.request.get(f"{live_arbiter.url}/api/models/{MODEL}/disk").json()
    by_host = {entry["host"]: entry for entry in disk}
    assert by_host[HOST]["present"] is True and by_host[HOST]["size_bytes"] > 1024**3
    assert by_host["sim-a"]["present"] is False

    # Delete, after the browser's confirm dialog.
    dialogs: list[str] = []

    def accept(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    row.get_by_role("button", name="Delete from disk").click()
    expect(row).to_have_class("disk-absent", timeout=DISK_MS)
    assert dialogs == [f"Delete {MODEL} from {HOST}?"]
    expect(row.locator("td").nth(0)).to_have_text("absent")
    expect(row.get_by_role("button", name="Download")).to_be_enabled()
    expect(card.locator(".disk-error")).to_be_empty()
    disk = page.request.get(f"{live_arbiter.url}/api/models/{MODEL}/disk").json()
    assert {entry["host"]: entry["present"] for entry in disk}[HOST] is False
    removes = [
        argv
        for c in simulator.commands(HOST)["commands"]
        for argv in c["argvs"]
        if argv[:2] == ["rm", "-rf"]
    ]
    assert removes == [["rm", "-rf", "--", f"{CACHE}/models--BAAI--bge-small-en-v1.5"]]


def test_it_offers_no_disk_buttons_for_local_models_or_unreachable_hosts(
    live_arbiter, simulator, new_admin_context
):
    page = new_admin_context().new_page()
    page.goto(live_arbiter.url + "/catalog/")

    # A local model: present everywhere, and nothing to download or delete.
    local = page.locator(f"#model-{LOCAL_MODEL}")
    expect(local.locator(f"#disk-{LOCAL_MODEL} tr.disk-present")).to_have_count(
        len(HOSTS), timeout=DISK_MS
    )
    expect(local.locator(f"#disk-{LOCAL_MODEL} button")).to_have_count(0)
    expect(local.locator(".disk-progress")).to_have_count(0)

    # A host that does not answer: its row says why, and offers nothing.
    simulator.down("sim-gb10")
    try:
        page.reload()
        error_row = page.locator(f'#disk-{MODEL} tr[data-host="sim-gb10"]')
        expect(error_row).to_have_class("disk-error", timeout=DISK_MS)
        expect(error_row.locator("button")).to_have_count(0)
        for host in ("sim-a", "sim-b"):
            expect(page.locator(f'#disk-{MODEL} tr[data-host="{host}"] button')).to_have_text(
                "Download"
            )
    finally:
        simulator.up("sim-gb10")


def test_it_shows_why_a_download_failed_and_lets_it_be_tried_again(live_arbiter, new_admin_context):
    page = new_admin_context().new_page()
    page.goto(live_arbiter.url + "/catalog/")
    token = page.locator("[name=csrfmiddlewaretoken]").first.input_value()
    api = f"{live_arbiter.url}/api/models"
    headers = {"X-CSRFToken": token}
    # The simulated hub refuses repos named "gated" without HF_TOKEN, which serve lacks.
    created = page.request.post(
        api, headers=headers, data={"key": "gated-demo", "hub_repo": "acme/gated-demo"}
    )
    assert created.status == 201, created.text()
    try:
        page.reload()
        card = page.locator("#model-gated-demo")
        row = card.locator('#disk-gated-demo tr[data-host="sim-a"]')
        expect(row).to_have_class("disk-absent", timeout=DISK_MS)
        row.get_by_role("button", name="Download").click()

        alert = card.locator(".disk-error")
        expect(alert).to_have_attribute("role", "alert")
        # `hf` is not on a stock non-interactive PATH: the download ran through its module.
        expect(alert).to_contain_text("sim-a: python3 exited with status 1", timeout=DOWNLOAD_MS)
        expect(alert).not_to_contain_text("sim-a: sim-a:")
        expect(alert).to_contain_text("GatedRepoError")
        expect(row.get_by_role("button", name="Download")).to_be_enabled()
        expect(row).to_have_class("disk-absent")
        expect(card.locator(".disk-progress")).to_contain_text("Downloading acme/gated-demo")
    finally:
        page.request.delete(f"{api}/gated-demo", headers=headers)
