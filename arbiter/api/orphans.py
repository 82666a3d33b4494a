"""Orphaned containers per host (arbiter.engine.orphans): list them, remove one.

`GET /api/hosts/{name}/orphans` scans the host now. `DELETE .../orphans/{container}`
is an admin's act (arbiter.route_policy), audited, and a change to what runs on a GPU:
while someone else holds the swap lock it is refused with 423 like every other such
change (only the holder's token passes). The container is checked again on the host
right before `docker rm --force`: 404 naming `container` when it is not an orphan.
"""

from __future__ import annotations

from datetime import datetime

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from django.utils import timezone
from ninja import Router, Schema

from arbiter import audit
from arbiter.api.status import OrphanOut
from arbiter.engine import orphans
from coordination.locks import TOKEN_HEADER as LOCK_TOKEN_HEADER
from coordination.locks import assert_may_change_gpu

router = Router(tags=["inventory"])


class OrphansOut(Schema):
    host: str
    checked_at: datetime
    orphans: list[OrphanOut]


@router.get(
    "/hosts/{name}/orphans",
    response=OrphansOut,
    summary="Containers labelled as Arbiter's on a host that nothing accounts for",
)
async def list_orphans(request: HttpRequest, name: str):
    found = await orphans.scan_by_name(name)
    return {"host": name, "checked_at": timezone.now(), "orphans": found}


@router.delete(
    "/hosts/{name}/orphans/{container}",
    response=OrphansOut,
    summary="Remove an orphaned container (docker rm --force); admin, audited",
)
async def remove_orphan(request: HttpRequest, name: str, container: str):
    return await remove_and_audit(request, name, container)


async def remove_and_audit(request: HttpRequest, name: str, container: str) -> dict:
    """The one way to remove an orphan: the API route and the dashboard's button."""
    await sync_to_async(assert_may_change_gpu)(request.headers.get(LOCK_TOKEN_HEADER) or None)
    removed, left = await orphans.remove(name, container)
    await sync_to_async(audit.record)(
        request, "orphan.remove", "host", name, before={"container": removed}, after=None
    )
    return {"host": name, "checked_at": timezone.now(), "orphans": left}
