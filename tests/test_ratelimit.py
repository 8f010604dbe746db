"""Per-key rate limits: the token bucket on a clock the test turns, then 429s over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestServer

from collector.app import create_app as create_collector
from collector.ratelimit import BucketTable, Limit, retry_after_seconds
from journeys.keys import add_key
from journeys.metrics import Metrics
from collector.origins import change_origins
from journeys.stores import Stores
from support import basic, wait_stored, with_settings

SHOP = "https://shop.example"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_admits_its_burst_then_refills_at_its_rate() -> None:
    clock = Clock()
    table = BucketTable(10, clock)
    limit = Limit(rate=2.0, burst=3)
    assert [table.take("k", limit) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert table.take("k", limit) == pytest.approx(0.5)  # empty: one token comes in 1/2 s
    clock.now += 0.25
    assert table.take("k", limit) == pytest.approx(0.25)  # half a token by now
    clock.now += 0.25
    assert table.take("k", limit) == 0.0
    clock.now += 100  # a long quiet spell refills to the burst, not beyond
    assert [table.take("k", limit) for _ in range(4)][-1] > 0
    assert table.take("other", limit) == 0.0  # buckets are per key


def test_refused_takes_do_not_consume_tokens() -> None:
    clock = Clock()
    table = BucketTable(10, clock)
    limit = Limit(rate=1.0, burst=1)
    assert table.take("k", limit) == 0.0
    for _ in range(5):  # hammering while empty must not push the next token further away
        assert table.take("k", limit) == pytest.approx(1.0)
    clock.now += 1.0
    assert table.take("k", limit) == 0.0


def test_the_table_is_bounded_and_forgets_the_least_recently_used() -> None:
    clock = Clock()
    table = BucketTable(3, clock)
    limit = Limit(rate=0.001, burst=1)
    for key in ("a", "b", "c"):
        table.take(key, limit)
    table.take("a", limit)  # a is used again: b is now the least recently used
    table.take("d", limit)
    assert len(table) == 3
    assert table.take("a", limit) > 0 and table.take("c", limit) > 0  # still empty: remembered
    assert table.take("b", limit) == 0.0  # forgotten, so new (and full)


@pytest.mark.parametrize("wait,seconds", [(0.001, 1), (0.5, 1), (1.0, 1), (1.01, 2), (99.2, 100)])
def test_retry_after_is_whole_seconds_rounded_up_and_never_zero(wait: float, seconds: int) -> None:
    assert retry_after_seconds(wait) == seconds


@pytest.fixture
async def tight(stores: Stores, tmp_path: Path) -> AsyncIterator[tuple[TestServer, Metrics]]:
    """A collector with tiny buckets: 2 requests per write key, 1 per public key and client, then ~100 s."""
    tight_stores = with_settings(
        stores,
        spool_dir=tmp_path / "spool",
        rate_limit_write_per_s=0.01,
        rate_limit_write_burst=2,
        rate_limit_public_per_s=0.01,
        rate_limit_public_burst=1,
        client_address_header="X-Forwarded-For",
    )
    metrics = Metrics()
    server = TestServer(create_collector(tight_stores, metrics), host="127.0.0.1")
    await server.start_server()
    yield server, metrics
    await server.close()


def _batch(event: str, key: str | None = None) -> bytes:
    body: dict[str, object] = {"batch": [{"type": "track", "event": event, "anonymousId": "a"}]}
    if key:
        body["writeKey"] = key
    return orjson.dumps(body)


async def test_over_the_limit_is_429_with_retry_after_and_counted_by_kind(http, tight, stores, project) -> None:  # type: ignore[no-untyped-def]
    server, metrics = tight
    url = server.make_url("/v1/batch")
    statuses = []
    for i in range(3):
        async with http.post(url, data=_batch(f"e{i}"), headers=basic(project.write_key)) as resp:
            statuses.append(resp.status)
            last_body, last_headers = await resp.json(), resp.headers
    assert statuses == [200, 200, 429]
    retry_after = int(last_headers["Retry-After"])
    assert 90 <= retry_after <= 100  # one token at 0.01/s is ~100 s away
    [error] = last_body["errors"]
    assert (
        error["field"] == "Authorization" and "rate limit" in error["reason"] and f"{retry_after} s" in error["reason"]
    )
    assert metrics.rate_limited.labels("write")._value.get() == 1
    async with http.get(server.make_url("/metrics")) as resp:
        assert 'journeys_rate_limited_total{kind="write"} 1.0' in await resp.text()
    # Another write key of the same project has its own bucket; the refused request stored nothing.
    async with stores.pg.acquire() as conn:
        second = await add_key(conn, project.id, "write")
    async with http.post(url, data=_batch("second key"), headers=basic(second)) as resp:
        assert resp.status == 200
    await wait_stored(stores, project.id, 3)
    _, rows = await stores.clickhouse.query(
        "SELECT event FROM events WHERE project_id = {p:String} ORDER BY event", {"p": project.id}
    )
    assert rows == [("e0",), ("e1",), ("second key",)]


async def test_public_keys_are_limited_per_client_address(http, tight, stores, project) -> None:  # type: ignore[no-untyped-def]
    server, metrics = tight
    async with stores.pg.acquire() as conn:
        key = await add_key(conn, project.id, "public")
        await change_origins(conn, project.id, [SHOP])
    url = server.make_url("/v1/batch")

    async def send(client: str) -> tuple[int, dict[str, str]]:
        # A proxy appends the address it saw; an entry the client wrote itself comes earlier and is ignored.
        headers = {"Origin": SHOP, "Content-Type": "text/plain", "X-Forwarded-For": f"6.6.6.6, {client}"}
        async with http.post(url, data=_batch("view", key), headers=headers) as resp:
            return resp.status, dict(resp.headers)

    assert (await send("10.0.0.1"))[0] == 200
    status, headers = await send("10.0.0.1")
    assert status == 429 and int(headers["Retry-After"]) >= 1
    # The page may read the 429 and its Retry-After: the origin is listed.
    assert headers["Access-Control-Allow-Origin"] == SHOP and "Retry-After" in headers["Access-Control-Expose-Headers"]
    assert (await send("10.0.0.2"))[0] == 200  # another visitor of the same site is not affected
    assert metrics.rate_limited.labels("public")._value.get() == 1
    assert metrics.rate_limited.labels("write")._value.get() == 0


async def test_zero_rate_means_no_limit(http, stores, project, tmp_path) -> None:  # type: ignore[no-untyped-def]
    unlimited = with_settings(stores, spool_dir=tmp_path / "spool", rate_limit_write_per_s=0, rate_limit_write_burst=1)
    server = TestServer(create_collector(unlimited, Metrics()), host="127.0.0.1")
    await server.start_server()
    try:
        for i in range(5):
            async with http.post(
                server.make_url("/v1/batch"), data=_batch(f"e{i}"), headers=basic(project.write_key)
            ) as resp:
                assert resp.status == 200
    finally:
        await server.close()
