"""Browser fixtures: Debian Chromium driven by Playwright (no browser download).

Also a logged-in session for the dashboard and a client for the simulator's control API,
so live-dashboard tests can move a GPU or take a host down in the served instance.
"""

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = os.environ.get("ARBITER_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (browser tests never skip)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def log_in(live_arbiter) -> Callable[[Any], None]:
    """Log `page` in as the first admin through the real login form; end on the dashboard."""

    def log_in(page) -> None:
        page.goto(live_arbiter.url + "/")
        assert "/login/" in page.url  # the dashboard needs a login
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", live_arbiter.admin_password)
        page.click("button[type=submit]")
        page.wait_for_url(live_arbiter.url + "/")

    return log_in


@pytest.fixture(scope="module")
def admin_session(live_arbiter, browser) -> dict:
    """The admin's cookies (Playwright storage state), from one real login per module."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.goto(live_arbiter.url + "/login/")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", live_arbiter.admin_password)
        page.click("button[type=submit]")
        page.wait_for_url(live_arbiter.url + "/")
        return context.storage_state()
    finally:
        context.close()


@pytest.fixture
def new_admin_context(browser, admin_session) -> Iterator[Callable[[], Any]]:
    """Make browser contexts already logged in as the admin; all closed after the test."""
    contexts = []

    def new_context():
        context = browser.new_context(viewport=VIEWPORT, storage_state=admin_session)
        contexts.append(context)
        return context

    yield new_context
    for context in contexts:
        context.close()


@pytest.fixture
def logged_in_page(live_arbiter, new_admin_context):
    """A page showing the dashboard with its socket open (body.ws-live)."""
    page = new_admin_context().new_page()
    page.goto(live_arbiter.url + "/")
    page.locator("body.ws-live").wait_for(timeout=10000)
    return page


@dataclass
class SimulatorControl:
    """A client for the simulated cluster's control API (arbiter/simulator/control.py)."""

    url: str
    http: httpx.Client

    def _post(self, path: str, body: dict | None = None) -> dict:
        response = self.http.post(f"{self.url}{path}", json=body or {})
        assert response.status_code == 200, response.text
        return response.json()

    def set_gpu(self, host: str, index: int, **values: Any) -> dict:
        """Pin readings, e.g. `set_gpu("sim-a", 0, utilization=63)`."""
        return self._post(f"/hosts/{host}/gpus/{index}", values)

    def down(self, host: str) -> None:
        self._post(f"/hosts/{host}/down")

    def up(self, host: str) -> None:
        self._post(f"/hosts/{host}/up")

    def commands(self, host: str, since: int = 0) -> dict:
        """{"commands": [{"raw", "argvs", "time", ...}], "next": N} from index `since` on."""
        response = self.http.get(f"{self.url}/hosts/{host}/commands", params={"since": since})
        assert response.status_code == 200, response.text
        return response.json()

    def command_count(self, host: str) -> int:
        return self.commands(host)["next"]


@pytest.fixture(scope="module")
def simulator(live_arbiter) -> Iterator[SimulatorControl]:
    """The control API of the cluster `serve` started (its URL is in sim/control.json).

    Hosts taken down and pinned GPUs are put back after the module, for later tests.
    """
    control_file = live_arbiter.data_dir / "sim" / "control.json"
    live_arbiter.wait_for(control_file.exists, timeout=30)
    url = json.loads(control_file.read_text())["url"]
    with httpx.Client(timeout=10) as http:
        control = SimulatorControl(url, http)
        yield control
        for host in http.get(f"{url}/hosts").json()["hosts"]:
            control.up(host["name"])
            for index in range(len(host["gpus"])):
                control.set_gpu(host["name"], index, reset=True)
