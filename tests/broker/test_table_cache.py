"""The routing table's cache (`table.RouteTableCache`) and the parsed-URL memo of the
passthrough: what they may serve, and for how long."""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx
import pytest

from arbiter.broker import proxy, table
from arbiter.broker.table import RouteTable, RouteTableCache


@pytest.fixture
def reads(monkeypatch) -> list[float]:
    """Each read of the table (when it happened); the read itself returns an empty table."""
    happened: list[float] = []

    def read() -> RouteTable:
        happened.append(time.monotonic())
        return RouteTable()

    monkeypatch.setattr(table, "read_route_table", read)
    return happened


async def test_it_serves_a_table_past_half_its_lifetime_while_it_is_refreshed(reads):
    cache = RouteTableCache(ttl=1.0)
    first = await cache.get()
    await asyncio.sleep(0.55)

    served = await cache.get()  # no wait for the read it starts

    assert served is first and len(reads) == 1
    deadline = time.monotonic() + 5
    while cache.table is first and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert len(reads) == 2
    refreshed = await cache.get()
    assert refreshed is not first and refreshed.read_at > first.read_at


async def test_it_never_serves_a_table_past_its_lifetime(reads):
    cache = RouteTableCache(ttl=0.2)
    first = await cache.get()
    await asyncio.sleep(0.25)

    served = await cache.get()

    assert served is not first and len(reads) == 2
    assert time.monotonic() - served.read_at < 0.2


async def test_it_serves_a_young_table_without_a_read(reads):
    cache = RouteTableCache(ttl=5.0)
    first = await cache.get()

    assert [await cache.get() for _ in range(10)] == [first] * 10
    await asyncio.sleep(0.05)
    assert len(reads) == 1


def test_it_remembers_a_parsed_url_and_keeps_the_memo_bounded(monkeypatch):
    monkeypatch.setattr(proxy, "_PARSED_URLS", {})
    url = "http://127.0.0.1:8000/v1/chat/completions"
    assert proxy.parsed_url(url) is proxy.parsed_url(url) == httpx.URL(url)
    for n in itertools.islice(itertools.count(), proxy.MAX_PARSED_URLS * 2):
        proxy.parsed_url(f"{url}?n={n}")
    assert len(proxy._PARSED_URLS) <= proxy.MAX_PARSED_URLS


def test_it_refuses_a_url_httpx_refuses_and_does_not_remember_it(monkeypatch):
    monkeypatch.setattr(proxy, "_PARSED_URLS", {})
    with pytest.raises(httpx.InvalidURL):
        proxy.parsed_url("http://127.0.0.1:8000/v1/models?a=\x01")
    assert proxy._PARSED_URLS == {}
