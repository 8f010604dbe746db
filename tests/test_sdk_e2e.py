"""The SDK against the real collector, counted in real ClickHouse: every event, exactly once in reads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from journeys_sdk import APIError, Client, NetworkError, RetryBudgetExceeded
from support import basic, wait_drained


async def _unique_and_raw(stores, project_id: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    _, rows = await stores.clickhouse.query(
        "SELECT uniqExact(message_id), count() FROM events WHERE project_id = {p:String}", {"p": project_id}
    )
    return rows[0][0], rows[0][1]


async def test_every_kind_of_call_arrives_once(collector, stores, project) -> None:  # type: ignore[no-untyped-def]
    client = Client(project.write_key, host=str(collector.make_url("")).rstrip("/"), upload_interval=0.05)
    try:
        results = []
        for i in range(2000):
            user = f"cust-{i % 50}"
            results.append(client.track(user, "Viewed Product", {"sku": f"S{i}"}))
            results.append(
                client.touchpoint(user_id=user, channel="store", action="pos_purchase", sentiment="positive")
            )
        results.append(client.identify("cust-1", {"plan": "b2b", "country": "DE"}))
        results.append(client.page("cust-1", name="Pricing", properties={"url": "https://x.test/?utm_source=news"}))
        results.append(client.screen("cust-1", name="Cart"))
        results.append(client.group("cust-1", "acme", {"size": 50}))
        results.append(client.alias("anon-7", "cust-1"))
        assert all(results), [r for r in results if not r][:3]
        assert await client.aflush(timeout=30)
    finally:
        client.shutdown()
    await wait_drained(collector)
    unique, _ = await _unique_and_raw(stores, project.id)
    assert unique == 4005
    assert client.stats.sent == 4005 and client.stats.failed == 0
    _, rows = await stores.clickhouse.query(
        "SELECT type, channel, touchpoint, sentiment, utm_source FROM events WHERE project_id = {p:String} "
        "AND (touchpoint = 'pos_purchase' OR type != 'track') LIMIT 1 BY type, touchpoint",
        {"p": project.id},
    )
    kinds = {(r[0], r[2]): r for r in rows}
    assert kinds[("track", "pos_purchase")][1:4] == ("store", "pos_purchase", "positive")
    assert kinds[("page", "page_view")][4] == "news"
    assert {k[0] for k in kinds} == {"track", "identify", "page", "screen", "group", "alias"}


@pytest.fixture
async def lossy_proxy(collector) -> AsyncIterator[tuple[str, list[int]]]:  # type: ignore[no-untyped-def]
    """Forwards to the collector, then cuts the connection instead of answering every other request:
    the collector has committed the batch, the SDK never hears so, and retries it."""
    upstream = str(collector.make_url("")).rstrip("/")
    forwarded: list[int] = [0]

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {
            k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type", "Content-Encoding")
        }
        async with aiohttp.ClientSession() as session:
            async with session.post(upstream + request.path, data=body, headers=headers) as resp:
                payload, status = await resp.read(), resp.status
        forwarded[0] += 1
        if forwarded[0] % 2 == 1 and request.transport is not None:
            request.transport.abort()  # the response is lost on the way back
            raise asyncio.CancelledError
        return web.Response(body=payload, status=status, content_type="application/json")

    app = web.Application(client_max_size=10 * 1024 * 1024, handler_args={"auto_decompress": False})
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", forwarded
    await runner.cleanup()


async def test_retries_after_lost_responses_are_counted_once(lossy_proxy, collector, stores, project, query) -> None:  # type: ignore[no-untyped-def]
    host, forwarded = lossy_proxy
    client = Client(project.write_key, host=host, upload_interval=0.05, upload_size=100, backoff_base=0.01)
    try:
        for i in range(1000):
            assert client.track(f"r-{i % 10}", "Clicked", {"i": i})
        assert await client.aflush(timeout=60)
    finally:
        client.shutdown()
    await wait_drained(collector)
    unique, raw = await _unique_and_raw(stores, project.id)
    assert client.stats.retries >= 5 and forwarded[0] >= 15
    assert unique == 1000
    assert raw >= 1000  # the collector stored retried batches again (or a merge already folded them)
    headers = basic(project.read_key)
    async with aiohttp.ClientSession() as http:
        async with http.get(query.make_url("/v1/stats"), headers=headers) as resp:
            assert (await resp.json())["events"] == 1000
        seen: list[int] = []
        for c in range(10):
            async with http.get(query.make_url(f"/v1/customers/r-{c}/events?limit=10000"), headers=headers) as resp:
                seen.extend(e["properties"]["i"] for e in (await resp.json())["events"])
    assert sorted(seen) == list(range(1000))


# --------------------------------------------------------------------------------------------------------
# flush() says whether everything got there (a FlushResult), against the real collector
# --------------------------------------------------------------------------------------------------------


async def test_flush_is_truthy_only_when_the_collector_took_everything(collector, stores, project) -> None:  # type: ignore[no-untyped-def]
    client = Client(project.write_key, host=str(collector.make_url("")).rstrip("/"), upload_interval=0.05)
    try:
        for i in range(30):
            assert client.track(f"f-{i % 3}", "Flushed", {"i": i})
        flushed = await client.aflush(timeout=30)
    finally:
        client.shutdown()
    assert flushed and (flushed.queued, flushed.delivered, flushed.failed, flushed.pending) == (30, 30, 0, 0)
    await wait_drained(collector)
    assert (await _unique_and_raw(stores, project.id))[0] == 30


async def test_flush_is_falsy_after_a_401_for_a_wrong_key(collector) -> None:  # type: ignore[no-untyped-def]
    errors: list = []
    client = Client(
        "jw_" + "x" * 43,
        host=str(collector.make_url("")).rstrip("/"),
        upload_interval=0.05,
        on_error=lambda exc, events: errors.append(exc),
    )
    try:
        client.track("u", "Refused")
        client.track("u", "Refused too")
        flushed = await client.aflush(timeout=30)
    finally:
        client.shutdown()
    assert not flushed and (flushed.queued, flushed.delivered, flushed.failed, flushed.pending) == (2, 0, 2, 0)
    assert isinstance(flushed.last_error, APIError) and flushed.last_error.status == 401
    assert "unknown or revoked key" in str(flushed.last_error)
    assert errors == [flushed.last_error]


async def test_flush_is_falsy_after_giving_up_on_a_collector_that_is_down(collector_stores, project) -> None:  # type: ignore[no-untyped-def]
    from aiohttp.test_utils import TestServer

    from collector.app import create_app
    from journeys.metrics import Metrics

    server = TestServer(create_app(collector_stores, Metrics()), host="127.0.0.1")
    await server.start_server()
    client = Client(
        project.write_key,
        host=str(server.make_url("")).rstrip("/"),
        upload_interval=0.05,
        retry_budget=0.5,
        backoff_base=0.02,
        max_backoff=0.1,
    )
    try:
        client.track("u", "While up")
        up = await client.aflush(timeout=30)
        assert up and up.delivered == 1
        await server.close()  # the collector is gone: connections are refused
        client.track("u", "While down")
        client.track("u", "While down too")
        down = await client.aflush(timeout=30)
    finally:
        client.shutdown(timeout=1)
    assert not down and (down.queued, down.delivered, down.failed, down.pending) == (2, 0, 2, 0)
    assert isinstance(down.last_error, RetryBudgetExceeded) and isinstance(down.last_error.last_error, NetworkError)
