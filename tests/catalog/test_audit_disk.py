"""A hub download and a delete from a host's disk each leave one audit row naming the
key, the host and the client (arbiter.audit), on the simulator."""

import pytest
from asgiref.sync import sync_to_async

from arbiter.models import AuditEvent
from tests.catalog.conftest import acreate_hub, parse_sse

pytestmark = pytest.mark.django_db(transaction=True)


@sync_to_async
def trail() -> list[AuditEvent]:
    return list(AuditEvent.objects.order_by("pk"))


async def test_it_writes_one_row_each_for_a_download_and_a_disk_delete(sim_hosts, aclient):
    await acreate_hub("qwen")
    response = await aclient.post("/api/models/qwen/download?host=sim-a")
    assert response.status_code == 200
    body = "".join(
        [c.decode() if isinstance(c, bytes) else c async for c in response.streaming_content]
    )
    assert parse_sse(body)[-1][0] == "done"
    deleted = await aclient.delete("/api/models/qwen/disk?host=sim-a")
    assert deleted.status_code == 204

    download, delete = await trail()
    assert (download.action, download.object_type, download.object_id) == (
        "catalog.download",
        "catalog_model",
        "qwen",
    )
    assert download.after == {"host": "sim-a", "repo": "Qwen/Qwen3-0.6B", "revision": ""}
    assert (delete.action, delete.object_id, delete.after) == (
        "catalog.disk_delete",
        "qwen",
        {"host": "sim-a", "present": False},
    )
    for row in (download, delete):
        assert (row.actor_kind, row.actor_name, row.actor_role) == (
            "key",
            "nightly cron",
            "operator",
        )
        assert row.client_address == "127.0.0.1"


async def test_it_writes_no_row_for_a_refused_delete(sim_host_rows, aclient):
    await acreate_hub("qwen")
    assert (await aclient.delete("/api/models/qwen/disk?host=nope")).status_code == 404
    assert await trail() == []
