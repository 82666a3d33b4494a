"""`GET /api/hosts/{name}/checks`: a host's preconditions (see arbiter.engine.host_checks)."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router, Schema

from arbiter.engine.host_checks import check_host

router = Router(tags=["inventory"])


class HostCheckSchema(Schema):
    name: str
    ok: bool
    detail: str
    fix: str


class HostChecksOut(Schema):
    host: str
    ok: bool
    checks: list[HostCheckSchema]


@router.get(
    "/hosts/{name}/checks",
    response=HostChecksOut,
    summary="Check a host's preconditions (SSH, docker, NVIDIA, hf, token, cache, disk)",
)
async def host_checks(request: HttpRequest, name: str, model: str | None = None):
    # A missing host (or model) is NotFound: 404 naming the field.
    return (await check_host(name, model)).as_dict()
