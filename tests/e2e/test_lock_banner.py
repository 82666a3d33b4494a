"""The lock banner in a real browser against `manage.py serve`: a lock taken through the API
appears (pushed, no reload) with its holder and a countdown that runs; a staff user
force-releases it from the banner after a confirmation; the audit row is written and a real
local receiver gets the signed `lock.force_released` event, which the webhook panel shows
and can redeliver with the same webhook-id."""

import json
import queue
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from playwright.sync_api import expect
from standardwebhooks import Webhook

pytestmark = pytest.mark.e2e

PUSH_DEADLINE_MS = 5000
DELIVERY_DEADLINE_S = 10.0
TTL = 900


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver on loopback (stdlib http.server) recording every request."""

    url: str
    requests: "queue.Queue[ReceivedRequest]" = field(default_factory=queue.Queue)
    answer_after: list[float] = field(default_factory=lambda: [0.0])  # seconds; settable

    def next(self, timeout: float) -> ReceivedRequest:
        try:
            return self.requests.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the receiver got nothing within {timeout} s") from None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    received: queue.Queue[ReceivedRequest] = queue.Queue()
    answer_after = [0.0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {name.lower(): value for name, value in self.headers.items()}
            received.put(ReceivedRequest(self.path, headers, body))
            time.sleep(answer_after[0])
            reply = b'{"received": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args) -> None:  # keep the test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hooks/arbiter"
        yield Receiver(url, received, answer_after)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def api(live_arbiter) -> Iterator[httpx.Client]:
    """The API as a cron job calls it: with an API key made by `manage.py create_api_key`."""
    # Admin: it also registers the webhook receiver (a webhook write, arbiter.roles).
    key = live_arbiter.manage("create_api_key", "e2e lock banner", "--role", "admin").strip()
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=live_arbiter.url, headers=headers, timeout=10) as client:
        yield client


def seconds(countdown: str) -> int:
    """'14:58' or '1:02:03' as seconds."""
    assert re.fullmatch(r"\d+(:\d\d){1,2}", countdown), countdown
    total = 0
    for part in countdown.split(":"):
        total = total * 60 + int(part)
    return total


def lock_audits(live_arbiter) -> list[dict]:
    code = (
        "import json; from coordination.models import LockAudit; print(json.dumps(list("
        "LockAudit.objects.values('actor_name', 'reason', 'old_holder', 'old_purpose', "
        "'old_generation', 'new_generation', 'lock_delay_seconds'))))"
    )
    return json.loads(live_arbiter.manage("shell", "-c", code).strip().splitlines()[-1])


def test_it_lets_a_staff_user_force_release_the_lock_it_shows(
    live_arbiter, api, receiver, logged_in_page, artifacts
):
    page = logged_in_page
    banner = page.locator("#lock-banner")
    expect(banner).to_be_hidden()  # the lock is free
    page.evaluate("window.__beforeLock = 'still here'")  # a reload would drop it

    created = api.post(
        "/api/webhooks",
        json={"url": receiver.url, "events": ["lock.force_released"], "description": "e2e"},
    )
    assert created.status_code == 201, created.text
    hook_id, secret = created.json()["id"], created.json()["secret"]

    taken = api.post(
        "/api/swap/lock",
        json={"holder": "nightly-eval", "ttl_seconds": TTL, "purpose": "weekly benchmark"},
    )
    assert taken.status_code == 201, taken.text
    generation = taken.json()["generation"]

    # Pushed when the grant commits: no reload, no poll (the socket stays up).
    expect(banner).to_be_visible(timeout=PUSH_DEADLINE_MS)
    expect(banner).to_have_attribute("data-state", "held")
    expect(banner.locator(".lock-holder")).to_have_text("nightly-eval")
    expect(banner.locator(".lock-purpose")).to_have_text("weekly benchmark")
    expect(banner.locator(".lock-generation")).to_have_text(f"generation {generation}")
    assert page.evaluate("window.__beforeLock") == "still here"
    expect(page.locator("body")).to_have_class(re.compile(r"\bws-live\b"))

    # A job registered now fires while the lock is held: the schedule panel says so.
    model = api.get("/api/models").json()[0]["key"]
    job = {"id": "e2e-every-minute", "name": "Every minute", "owner": "e2e"}
    job |= {"cron": "* * * * *", "timezone": "Europe/Riga", "target_model": model}
    assert api.post("/api/schedule", json=job).status_code == 201
    expect(page.locator("#job-e2e-every-minute")).to_contain_text(model, timeout=PUSH_DEADLINE_MS)
    lock_warning = page.locator("#schedule-panel .schedule-warning-lock_held")
    expect(lock_warning).to_contain_text("e2e-every-minute fires at")

    # The countdown runs in the browser between pushes.
    countdown = banner.locator(".lock-countdown")
    first = seconds(countdown.inner_text())
    assert TTL - 15 < first <= TTL
    time.sleep(2.5)
    second = seconds(countdown.inner_text())
    assert first - 5 <= second <= first - 1, (first, second)

    # Step one: open the form (staff only); step two: submit; then confirm the dialog.
    banner.locator("summary", has_text="Force release").click()
    form = banner.locator("#lock-force-release form")
    form.locator("input[name=reason]").fill("stuck job (e2e)")
    form.locator("input[name=lock_delay_seconds]").fill("0")
    page.screenshot(path=str(artifacts / "lock-banner.png"))
    dialogs: list[str] = []

    def confirm(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", confirm)
    form.locator("button[type=submit]").click()

    expect(banner.locator(".lock-held")).to_have_count(0, timeout=PUSH_DEADLINE_MS)
    expect(banner).to_have_attribute("data-state", "free")
    expect(banner.locator(".lock-countdown")).to_have_count(0)
    notice = banner.locator(".lock-notice")
    expect(notice).to_contain_text("Force-released by admin from nightly-eval")
    expect(notice).to_contain_text(f"generation {generation} → {generation + 1}")
    expect(notice).to_contain_text("stuck job (e2e)")
    assert len(dialogs) == 1 and "nightly-eval" in dialogs[0]
    expect(lock_warning).to_have_count(0)  # pushed with the banner
    assert page.evaluate("window.__beforeLock") == "still here"
    page.screenshot(path=str(artifacts / "lock-banner-released.png"))

    lock = api.get("/api/swap/lock").json()
    assert lock["held"] is False and lock["holder"] is None
    assert lock["generation"] == generation + 1
    assert lock_audits(live_arbiter) == [
        {
            "actor_name": "admin",
            "reason": "stuck job (e2e)",
            "old_holder": "nightly-eval",
            "old_purpose": "weekly benchmark",
            "old_generation": generation,
            "new_generation": generation + 1,
            "lock_delay_seconds": 0,
        }
    ]
    # The holder's token is worthless now.
    stale = api.delete("/api/swap/lock", headers={"X-Swap-Lock-Token": taken.json()["token"]})
    assert stale.status_code == 409

    # The receiver gets the signed event within a few seconds of the release.
    delivered = receiver.next(timeout=DELIVERY_DEADLINE_S)
    event = Webhook(secret).verify(delivered.body, delivered.headers)
    assert delivered.path == "/hooks/arbiter"
    assert event["type"] == "lock.force_released"
    assert event["data"]["old_holder"] == "nightly-eval"
    assert event["data"]["actor"] == "admin"
    assert event["data"]["reason"] == "stuck job (e2e)"
    assert (event["data"]["old_generation"], event["data"]["new_generation"]) == (
        generation,
        generation + 1,
    )

    # The webhook panel shows the delivery (pushed from the sender thread after the attempt),
    # and redelivers it with the same webhook-id.
    row = page.locator(f"#webhook-{hook_id} .delivery").first
    expect(row).to_have_attribute("data-status", "delivered", timeout=DELIVERY_DEADLINE_S * 1000)
    expect(row.locator(".delivery-code")).to_have_text("200")
    expect(row.locator(".delivery-type")).to_have_text("lock.force_released")
    row.locator(".delivery-excerpt summary").click()  # the attempt log stays open
    # The receiver answers slowly now: the panel the redeliver action answers with shows
    # the redelivery pending, and only a push from the sender thread can bring its outcome
    # (the socket is up, so nothing polls). Only requests for the webhook panel count: the
    # every-minute job's next-run countdown may end meanwhile and rightly re-fetch the
    # schedule panel.
    receiver.answer_after[0] = 1.5
    delivery_id = row.get_attribute("id").removeprefix("delivery-")
    panel_fetches: list[str] = []
    page.on(
        "request",
        lambda r: (
            panel_fetches.append(r.url)
            if "/fragments/webhooks" in r.url or "/actions/webhooks" in r.url
            else None
        ),
    )
    row.locator("button.redeliver").click()
    again = receiver.next(timeout=DELIVERY_DEADLINE_S)
    assert again.headers["webhook-id"] == delivered.headers["webhook-id"]
    assert Webhook(secret).verify(again.body, again.headers) == event
    expect(row.locator(".attempt-log li")).to_have_count(2, timeout=DELIVERY_DEADLINE_S * 1000)
    expect(row).to_have_attribute("data-status", "delivered")
    expect(row.locator(".attempt-log")).to_be_visible()
    assert panel_fetches == [
        f"{live_arbiter.url}/actions/webhooks/deliveries/{delivery_id}/redeliver"
    ]
    page.screenshot(path=str(artifacts / "coordination-panels.png"), full_page=True)


def test_it_hides_an_expiring_lock_without_a_reload(api, logged_in_page):
    page = logged_in_page
    banner = page.locator("#lock-banner")
    expect(banner.locator(".lock-held")).to_have_count(0)
    page.evaluate("window.__beforeLock = 'still here'")
    ttl = 3
    taken = api.post("/api/swap/lock", json={"holder": "short-job", "ttl_seconds": ttl})
    assert taken.status_code == 201, taken.text
    expect(banner.locator(".lock-holder")).to_have_text("short-job", timeout=PUSH_DEADLINE_MS)

    # Nothing is pushed for an expiry: the ticker hides the banner at 0:00, then the
    # banner fetches the server's state (free) - with the socket up the whole time.
    expect(banner).to_be_hidden(timeout=(ttl + 2) * 1000)
    expect(banner).to_have_attribute("data-state", "free", timeout=5000)
    expect(banner.locator(".lock-holder")).to_have_count(0)
    assert page.evaluate("window.__beforeLock") == "still here"
    expect(page.locator("body")).to_have_class(re.compile(r"\bws-live\b"))
    assert api.get("/api/swap/lock").json()["held"] is False
