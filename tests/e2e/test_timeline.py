"""The timeline page in a real browser against `manage.py serve`: two jobs registered
through the API that need different models on one host at overlapping times show as a
conflict, highlighted on that host's row and listed above the bars."""

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.e2e


@pytest.fixture
def api(live_arbiter) -> Iterator[httpx.Client]:
    key = live_arbiter.manage("create_api_key", "e2e timeline").strip()
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=live_arbiter.url, headers=headers, timeout=30) as client:
        yield client
        for job_id in ("eval-a", "eval-b"):
            client.delete(f"/api/schedule/{job_id}")


def register(api: httpx.Client, job_id: str, cron: str, model: str, lead: int, hold: int):
    body = {
        "id": job_id,
        "name": job_id,
        "cron": cron,
        "target_model": model,
        "warm_up": {"host": "sim-a", "lead_seconds": lead, "hold_seconds": hold},
    }
    response = api.post("/api/schedule", json=body)
    assert response.status_code in (200, 201), response.text


def test_it_shows_two_jobs_needing_different_models_on_one_host_as_a_conflict(
    live_arbiter, new_admin_context, api
):
    models = [m["key"] for m in api.get("/api/models").json()]
    assert len(models) >= 2, models
    # eval-a holds sim-a from :50 to :30 the next hour; eval-b wants it from :05 on.
    register(api, "eval-a", "0 * * * *", models[0], lead=600, hold=1800)
    register(api, "eval-b", "15 * * * *", models[1], lead=600, hold=600)

    timeline = api.get("/api/timeline", params={"hours": 24}).json()
    sim_a = next(host for host in timeline["hosts"] if host["name"] == "sim-a")
    assert any(c["kind"] == "jobs" for c in sim_a["conflicts"])

    page = new_admin_context().new_page()
    page.goto(live_arbiter.url + "/")
    page.click("#nav-timeline")
    page.wait_for_url(live_arbiter.url + "/timeline/")
    conflict = page.locator(".timeline-conflict-item[data-kind=jobs][data-host=sim-a]").first
    expect(conflict).to_contain_text("eval-a")
    expect(conflict).to_contain_text("eval-b")
    expect(conflict).to_contain_text("need different models on sim-a")
    host_row = page.locator("#timeline-host-sim-a")
    expect(host_row).to_have_class("timeline-host timeline-host-conflict")
    assert host_row.locator(".timeline-conflict[data-kind=jobs]").count() >= 1
    assert host_row.locator(".timeline-run").count() >= 2
    # The other hosts have no conflict.
    expect(page.locator("#timeline-host-sim-b")).to_have_class("timeline-host")
