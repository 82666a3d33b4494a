"""The dashboard's coordination panels (lock banner, scheduled jobs, webhooks), rendered from
database rows; the staff-only force-release form; escaping; poll views; pushes on commit."""

import re
import threading
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connections
from django.test import Client
from django.utils import timezone

from arbiter import events
from arbiter.asgi import application
from catalog.models import CatalogModel
from coordination import locks
from coordination.models import (
    DeliveryAttempt,
    LockAudit,
    ScheduledJob,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from dashboard import live
from dashboard.consumers import full_state
from dashboard.panels import coordination
from dashboard.panels.labels import format_countdown
from dashboard.panels.lock_banner import FORCE_RELEASE_SHOWN_FOR
from dashboard.panels.schedules import schedule_context
from dashboard.panels.webhooks import DELIVERIES_PER_ENDPOINT

FRAGMENTS = ["/fragments/lock", "/fragments/lock/force-release", "/fragments/schedule"]
FRAGMENTS += ["/fragments/webhooks"]
XSS = '<script>alert("x")</script>'
FORCE_RELEASE = 'hx-post="/actions/lock/force-release"'
ORIGIN = (b"origin", b"http://127.0.0.1:8000")


def section(html: str, element_id: str) -> str:
    """The element with that id, through its matching closing tag."""
    start = re.search(rf'<(\w+)[^>]* id="{element_id}"', html)
    assert start, f"no #{element_id}"
    tag, depth = start.group(1), 0
    for match in re.finditer(rf"<(/?){tag}\b[^>]*>", html[start.start() :]):
        depth += -1 if match.group(1) else 1
        if depth == 0:
            return html[start.start() : start.start() + match.end()]
    raise AssertionError(f"#{element_id} is not closed")


def opening_tag(html: str, element_id: str) -> str:
    match = re.search(rf'<\w+[^>]* id="{element_id}"[^>]*>', html)
    assert match, f"no #{element_id}"
    return match.group(0)


def operator(user):
    """Put `user` in the operator group: the webhook panel is not shown to viewers."""
    user.groups.add(Group.objects.get_or_create(name="operator")[0])
    return user


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def catalog_model(key: str = "qwen3-small") -> CatalogModel:
    return CatalogModel.objects.create(key=key, hub_repo="Qwen/Qwen3-0.6B", served_name=key)


def job(job_id: str, cron: str, tz: str = "UTC", **fields) -> ScheduledJob:
    model = CatalogModel.objects.first() or catalog_model()
    values = {"name": job_id, "owner": "ml-team", "target_model": model, **fields}
    return ScheduledJob.objects.create(job_id=job_id, cron=cron, timezone=tz, **values)


def endpoint(url: str = "https://hooks.example/arbiter", **fields) -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(url=url, secret_encrypted="x", **fields)


def delivery(
    to: WebhookEndpoint, status: str, attempts: list[tuple[int | None, str, str]]
) -> WebhookDelivery:
    """A delivery of a fresh event, with attempts given as (status code, excerpt, error)."""
    event = WebhookEvent.objects.create(
        event_id=f"msg_{WebhookEvent.objects.count() + 1:04d}",
        event_type="lock.force_released",
        payload={"old_holder": "nightly-eval"},
    )
    row = WebhookDelivery.objects.create(
        event=event,
        endpoint=to,
        status=status,
        attempts=len(attempts),
        last_status_code=attempts[-1][0] if attempts else None,
    )
    for code, excerpt, error in attempts:
        DeliveryAttempt.objects.create(
            delivery=row, status_code=code, response_excerpt=excerpt, error=error, latency_ms=12
        )
    return row


@pytest.mark.django_db
class TestLockBanner:
    def test_it_is_hidden_and_empty_while_the_lock_is_free(self):
        html = coordination.lock_banner()
        assert " hidden" in opening_tag(html, "lock-banner")
        assert 'data-state="free"' in html
        assert "lock-holder" not in html and "data-expires-at" not in html

    def test_it_shows_holder_purpose_generation_and_a_countdown_while_held(self):
        grant = locks.acquire("nightly-eval", 600, "weekly benchmark")
        html = coordination.lock_banner()
        banner = opening_tag(html, "lock-banner")
        assert " hidden" not in banner and 'data-state="held"' in banner
        assert '<span class="lock-holder" title="holder">nightly-eval</span>' in html
        assert "weekly benchmark" in html
        assert f"generation {grant.generation}" in html
        countdown = re.search(
            r'class="countdown lock-countdown" data-expires-at="([^"]+)" '
            r'data-seconds-left="([\d.]+)">(\d+):(\d\d)<',
            html,
        )
        assert countdown, html
        assert datetime.fromisoformat(countdown.group(1)) == grant.expires_at
        assert 595 < float(countdown.group(2)) <= 600
        assert countdown.group(3, 4) in {("10", "00"), ("9", "59")}
        # It hides itself when the countdown ends, then fetches the server's state.
        assert "data-hide-on-expiry" in banner and "countdown-ended" in banner

    def test_it_hides_an_expired_lock(self, monkeypatch):
        locks.acquire("nightly-eval", 600)
        later = timezone.now() + timedelta(seconds=601)
        monkeypatch.setattr(timezone, "now", lambda: later)
        html = coordination.lock_banner()
        assert " hidden" in opening_tag(html, "lock-banner")
        assert "nightly-eval" not in html

    def test_it_shows_the_force_release_form_to_staff_only(self, alice, bob):
        locks.acquire("nightly-eval", 600)
        for path in ("/", "/fragments/lock", "/fragments/lock/force-release"):
            staff = logged_in(alice).get(path).content.decode()
            viewer = logged_in(bob).get(path).content.decode()
            form = section(staff, "lock-force-release")
            assert FORCE_RELEASE in form, path  # dashboard/actions.py force_release
            assert 'name="reason"' in form and 'name="lock_delay_seconds"' in form
            assert "hx-confirm=" in form and "<details" in form  # open, fill, confirm
            assert FORCE_RELEASE not in viewer and 'name="reason"' not in viewer, path

    def test_it_pushes_a_banner_with_no_form_only_a_slot_each_viewer_fetches(self, alice):
        locks.acquire("nightly-eval", 600)
        pushed = coordination.lock_banner(oob=True)
        assert 'hx-swap-oob="true"' in opening_tag(pushed, "lock-banner")
        slot = section(pushed, "lock-force-release")
        assert 'hx-get="/fragments/lock/force-release"' in slot and 'hx-trigger="load"' in slot
        assert FORCE_RELEASE not in pushed

    def test_it_shows_no_form_when_the_lock_is_free(self, alice):
        html = logged_in(alice).get("/fragments/lock/force-release").content.decode()
        assert re.fullmatch(
            r'<div id="lock-force-release">\s*</div>', section(html, "lock-force-release")
        )

    def test_it_shows_the_last_force_release_briefly(self, alice):
        grant = locks.acquire("nightly-eval", 600)
        locks.force_release(alice, reason="stuck job", lock_delay_seconds=0)
        html = coordination.lock_banner(can_force_release=True, personal=True)
        banner = opening_tag(html, "lock-banner")
        assert 'data-state="free"' in banner and " hidden" not in banner
        assert "lock-held" not in html and FORCE_RELEASE not in html
        notice = section(html, "lock-banner")
        assert "Force-released by <strong" in notice and ">alice</strong>" in notice
        assert "nightly-eval" in notice and "stuck job" in notice
        assert f"generation {grant.generation} → {grant.generation + 1}" in notice

        LockAudit.objects.update(at=timezone.now() - FORCE_RELEASE_SHOWN_FOR)
        assert " hidden" in opening_tag(coordination.lock_banner(), "lock-banner")

    def test_it_shows_a_running_lock_delay(self, alice):
        locks.acquire("nightly-eval", 600)
        locks.force_release(alice, reason="", lock_delay_seconds=90)
        html = coordination.lock_banner()
        assert 'data-state="blocked"' in html
        assert "nobody may take the lock" in html
        assert re.search(r'class="countdown" data-expires-at="[^"]+" data-seconds-left', html)
        assert "lock-delay 90 s" in html

    def test_it_escapes_holder_and_purpose(self, alice):
        locks.acquire(XSS, 600, f'purpose {XSS} " onmouseover="x')
        html = logged_in(alice).get("/fragments/lock").content.decode()
        assert XSS not in html
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
        assert '" onmouseover="x' not in html  # not even inside hx-confirm="…"

    def test_it_formats_countdowns_like_the_ticker(self):
        assert format_countdown(599.2) == "10:00"
        assert format_countdown(59.0) == "0:59"
        assert format_countdown(3723) == "1:02:03"
        assert format_countdown(-3) == "0:00"


@pytest.mark.django_db
class TestSchedulePanel:
    def test_it_lists_jobs_with_their_next_three_runs_in_utc_and_local_time(self):
        job("riga-eval", "30 9 * * *", "Europe/Riga", name="Riga eval", owner="lab-7")
        # 2024-03-31 is Riga's spring-forward day: 09:30 local moves from 07:30 to 06:30 UTC.
        now = datetime(2024, 3, 30, 5, 0, tzinfo=UTC)
        context = schedule_context(now)
        (view,) = context["jobs"]
        assert [r["utc_label"] for r in view["next_runs"]] == [
            "Sat 2024-03-30 07:30 UTC",
            "Sun 2024-03-31 06:30 UTC",
            "Mon 2024-04-01 06:30 UTC",
        ]
        assert [r["local_label"] for r in view["next_runs"]] == [
            "Sat 2024-03-30 09:30 EET",
            "Sun 2024-03-31 09:30 EEST",
            "Mon 2024-04-01 09:30 EEST",
        ]
        html = coordination.schedule_panel()
        row = section(html, "job-riga-eval")
        for text in ("Riga eval", "lab-7", "30 9 * * *", "Europe/Riga", "qwen3-small"):
            assert text in row
        assert len(re.findall(r"<li><time datetime=", row)) == 3
        # The panel re-renders itself once the earliest run shown has passed.
        assert context["next_run"] == {
            "at": datetime(2024, 3, 30, 7, 30, tzinfo=UTC),
            "seconds_left": 9000.0,
        }
        marker = re.search(r'class="schedule-next-run" hidden data-expires-at="[^"]+"', html)
        assert marker and "countdown-ended from:body" in opening_tag(html, "schedule-panel")

    def test_it_warns_about_a_run_while_the_lock_is_held(self):
        job("every-minute", "* * * * *")
        locks.acquire("nightly-eval", 600)
        html = coordination.schedule_panel()
        (warning,) = re.findall(r'<li class="schedule-warning [^>]*>(.*?)</li>', html)
        assert re.fullmatch(
            r"every-minute fires at .* while the lock is held \(until .*\)", warning
        )
        assert 'data-kind="lock_held"' in html
        assert "schedule-job-warned" in opening_tag(html, "job-every-minute")

    def test_it_warns_about_two_jobs_firing_within_ten_minutes(self):
        job("nightly-a", "0 3 * * *")
        job("nightly-b", "5 3 * * *")
        job("noon", "0 12 * * *")
        html = coordination.schedule_panel()
        (warning,) = re.findall(r'<li class="schedule-warning [^>]*>(.*?)</li>', html)
        assert re.fullmatch(
            r"nightly-a \(.*\) and nightly-b \(.*\) fire within 10 minutes.*", warning
        )
        assert 'data-kind="collision"' in html
        assert "schedule-job-warned" in opening_tag(html, "job-nightly-a")
        assert "schedule-job-warned" not in opening_tag(html, "job-noon")

    def test_it_gives_no_lock_warning_while_the_lock_is_free(self):
        job("every-minute", "* * * * *")
        html = coordination.schedule_panel()
        assert "lock_held" not in html
        assert "No scheduled jobs" not in html

    def test_it_says_so_when_nothing_is_registered(self):
        assert "No scheduled jobs registered" in coordination.schedule_panel()

    def test_it_shows_a_stored_row_that_no_longer_validates_instead_of_failing(self):
        job("gone-zone", "0 3 * * *", "Mars/Olympus_Mons")
        row = section(coordination.schedule_panel(), "job-gone-zone")
        assert 'class="error"' in row and "timezone" in row

    def test_it_escapes_job_fields(self):
        job("xss", "0 3 * * *", name=XSS, owner=XSS, description=XSS)
        html = coordination.schedule_panel()
        assert XSS not in html
        assert html.count("&lt;script&gt;") == 3


@pytest.mark.django_db
class TestWebhookPanel:
    def test_it_shows_endpoints_and_their_deliveries_with_attempts_and_redeliver(self):
        hook = endpoint(events=["lock.force_released"], description="ops")
        failed = delivery(
            hook,
            WebhookDelivery.FAILED,
            [(503, "busy", ""), (None, "", "ConnectError: refused"), (500, "oops", "")],
        )
        ok = delivery(hook, WebhookDelivery.DELIVERED, [(200, "thanks", "")])
        html = coordination.webhook_panel()
        card = section(html, f"webhook-{hook.pk}")
        assert "https://hooks.example/arbiter" in card
        assert "<code>lock.force_released</code>" in card
        assert 'class="badge badge-enabled">enabled<' in card

        row = section(html, f"delivery-{failed.pk}")
        assert 'data-status="failed"' in row
        assert '<td class="delivery-attempts">3</td>' in row
        assert '<td class="delivery-code">500</td>' in row
        assert "<code>oops</code>" in row  # the last attempt's response excerpt
        assert "ConnectError: refused" in row and "busy" in row  # the attempt log
        assert f'hx-post="/actions/webhooks/deliveries/{failed.pk}/redeliver"' in row
        assert 'data-status="delivered"' in section(html, f"delivery-{ok.pk}")
        assert "<code>thanks</code>" in html

    def test_it_shows_a_disabled_endpoints_reason_and_offers_no_redeliver(self):
        hook = endpoint(enabled=False, disabled_reason="the receiver answered 410 Gone")
        delivery(hook, WebhookDelivery.FAILED, [(410, "gone", "")])
        card = section(coordination.webhook_panel(), f"webhook-{hook.pk}")
        assert 'data-enabled="false"' in card and ">disabled<" in card
        assert "the receiver answered 410 Gone" in card
        assert "redeliver" not in card

    def test_it_polls_only_while_the_socket_is_down(self):
        hook = endpoint()
        delivery(hook, WebhookDelivery.PENDING, [])
        panel = coordination.webhook_panel()
        trigger = "every 10s [!document.body.classList.contains('ws-live')]"
        assert f'hx-trigger="{trigger}"' in opening_tag(panel, "webhook-panel")
        assert 'data-pending="true"' in opening_tag(panel, "webhook-panel")
        assert "not attempted yet" in panel

    def test_it_shows_only_the_latest_deliveries_of_an_endpoint(self):
        hook = endpoint()
        rows = [delivery(hook, WebhookDelivery.DELIVERED, [(200, "", "")]) for _ in range(7)]
        html = coordination.webhook_panel()
        assert html.count('class="delivery delivery-') == DELIVERIES_PER_ENDPOINT
        assert f'id="delivery-{rows[-1].pk}"' in html and f'id="delivery-{rows[0].pk}"' not in html
        assert "Latest 5 of 7 deliveries" in html

    def test_it_escapes_urls_and_response_excerpts(self):
        hook = endpoint(url=f"https://hooks.example/?q={XSS}", description=XSS)
        delivery(hook, WebhookDelivery.FAILED, [(500, XSS, XSS)])
        html = coordination.webhook_panel()
        assert XSS not in html
        assert "&lt;script&gt;" in html

    def test_it_says_so_without_endpoints(self):
        assert "No webhook endpoints" in coordination.webhook_panel()


@pytest.mark.django_db
class TestPageAndPolls:
    def test_it_includes_the_three_panels_in_the_page(self, bob):
        operator(bob)  # webhooks are read by operators (dashboard/roles.py)
        locks.acquire("nightly-eval", 600)
        html = logged_in(bob).get("/").content.decode()
        assert '<div id="lock-banner" hidden></div>' not in html
        assert "nightly-eval" in section(html, "lock-banner")
        assert "Scheduled jobs" in section(html, "schedule-panel")
        assert "Webhooks" in section(html, "webhook-panel")

    @pytest.mark.parametrize("path", FRAGMENTS)
    def test_it_needs_a_login_for_the_poll_views(self, path):
        response = Client().get(path, headers={"HX-Request": "true"})
        assert response.status_code == 204
        assert response["HX-Redirect"] == "/login/?next=/"
        plain = Client().get(path)
        assert plain.status_code == 302 and plain["Location"].startswith("/login/")

    @pytest.mark.parametrize(
        "path, element_id",
        [
            ("/fragments/lock", "lock-banner"),
            ("/fragments/lock/force-release", "lock-force-release"),
            ("/fragments/schedule", "schedule-panel"),
            ("/fragments/webhooks", "webhook-panel"),
        ],
    )
    def test_it_serves_the_fragment_by_its_id_from_the_poll_views(self, bob, path, element_id):
        operator(bob)
        response = logged_in(bob).get(path, headers={"HX-Request": "true"})
        assert response.status_code == 200
        section(response.content.decode(), element_id)
        assert "hx-swap-oob" not in response.content.decode()

    def test_it_sends_the_three_panels_out_of_band_in_the_full_state_on_connect(self, alice):
        locks.acquire("nightly-eval", 600)
        html = full_state()
        for element_id in ("lock-banner", "schedule-panel", "webhook-panel"):
            assert 'hx-swap-oob="true"' in opening_tag(html, element_id)
        assert FORCE_RELEASE not in html  # the socket is shared: no staff-only form in it


# -- pushes ---------------------------------------------------------------------------


async def _connected_dashboard() -> WebsocketCommunicator:
    @sync_to_async
    def session_cookie() -> str:
        operator(get_user_model().objects.create_user("carol", password="pw-123456"))
        client = Client()
        client.login(username="carol", password="pw-123456")
        return client.cookies["sessionid"].value

    cookie = f"sessionid={await session_cookie()}".encode()
    communicator = WebsocketCommunicator(
        application, "/ws/dashboard/", headers=[ORIGIN, (b"cookie", cookie)]
    )
    connected, _ = await communicator.connect()
    assert connected
    first = await communicator.receive_from(timeout=5)
    assert 'id="lock-banner"' in first and 'id="webhook-panel"' in first
    return communicator


@pytest.mark.django_db(transaction=True)
async def test_it_pushes_a_lock_change_once_it_commits():
    communicator = await _connected_dashboard()
    try:
        # As a sync API view runs under daphne: in a thread called from the socket's loop.
        await sync_to_async(locks.acquire)("nightly-eval", 600, "weekly benchmark")
        pushed = await communicator.receive_from(timeout=5)
        banner = section(pushed, "lock-banner")
        assert 'hx-swap-oob="true"' in banner and "nightly-eval" in banner
        assert 'id="schedule-panel"' in pushed  # its lock warnings follow the lock
    finally:
        await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_it_pushes_a_registered_schedule(alice):
    communicator = await _connected_dashboard()
    try:

        @sync_to_async
        def register() -> int:
            catalog_model()
            client = logged_in(alice)
            body = {"id": "nightly", "name": "Nightly eval", "cron": "0 3 * * *"}
            body |= {"timezone": "UTC", "target_model": "qwen3-small"}
            return client.post("/api/schedule", body, content_type="application/json").status_code

        assert await register() == 201
        pushed = await communicator.receive_from(timeout=5)
        assert "Nightly eval" in section(pushed, "schedule-panel")
    finally:
        await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_it_pushes_a_webhook_attempt_logged_in_a_worker_thread():
    communicator = await _connected_dashboard()
    try:
        hook = await sync_to_async(endpoint)()

        # A webhook sender thread (huey's pool), not called from the socket's loop: with the
        # in-memory layer the push is handed to the loop the socket connected on.
        def worker() -> None:
            try:
                delivery(hook, WebhookDelivery.DELIVERED, [(200, "thanks", "")])
                events.webhooks_changed.send(sender=None)
            finally:
                connections.close_all()

        thread = threading.Thread(target=worker)
        thread.start()
        await sync_to_async(thread.join)(10)
        pushed = await communicator.receive_from(timeout=5)
        panel = section(pushed, "webhook-panel")
        assert 'hx-swap-oob="true"' in panel and 'data-status="delivered"' in panel
    finally:
        await communicator.disconnect()


def test_it_renders_and_pushes_nothing_without_a_connected_socket(monkeypatch):
    # The in-memory layer's case (with Redis every push goes out, socket or not).
    monkeypatch.setattr(live, "_layer_is_shared", lambda: False)
    monkeypatch.setattr(live, "_socket_loop", None)
    rendered: list[bool] = []
    live.publish(lambda oob: rendered.append(oob) or "")
    assert rendered == []
