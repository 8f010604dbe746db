"""The real-server path: ``CLICKHOUSE_URL=http://…`` through clickhouse-connect's async HTTP client.

No modern ClickHouse server installs here, so ``testkit/chhttp.py`` serves ClickHouse's HTTP interface over
chDB (the same engine) in a separate process the test can stop and start: an outage is a real refused
connection, not a mock.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from testkit.chhttp import ClickHouseHTTP
from collector.app import create_app as create_collector
from collector.appkeys import SPOOL
from support import basic, wait_until
from journeys.clickhouse import ClickHouse
from journeys.keys import KeyResolver, create_project
from journeys.metrics import Metrics
from journeys.migrate import migrate_clickhouse
from journeys.stores import Stores
from query.app import create_app as create_query


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    with ClickHouseHTTP(tmp_path / "ch", password="s3cret") as ch:
        ch.start()
        yield ch


@pytest.fixture
async def http_stores(stores: Stores, server: ClickHouseHTTP, tmp_path: Path) -> AsyncIterator[Stores]:
    settings = stores.settings.model_copy(
        update={"clickhouse_url": server.url, "spool_dir": tmp_path / "spool", "insert_linger_ms": 5}
    )
    assert not settings.clickhouse_is_embedded
    clickhouse = await ClickHouse.connect(settings.effective_clickhouse_url)
    await migrate_clickhouse(clickhouse)
    yield dataclasses.replace(stores, settings=settings, clickhouse=clickhouse, keys=KeyResolver(stores.pg))
    await clickhouse.close()


@pytest.fixture
async def services(http_stores: Stores) -> AsyncIterator[tuple[TestServer, TestServer]]:
    metrics = Metrics()
    collector = TestServer(create_collector(http_stores, metrics), host="127.0.0.1")
    query = TestServer(create_query(http_stores, metrics), host="127.0.0.1")
    await collector.start_server()
    await query.start_server()
    yield collector, query
    await collector.close()
    await query.close()


async def _project(stores: Stores):  # type: ignore[no-untyped-def]
    async with stores.pg.acquire() as conn:
        return await create_project(conn, f"http-{id(stores)}-{asyncio.get_running_loop().time()}")


async def test_ingest_and_read_back_over_http_clickhouse(http_stores, services) -> None:  # type: ignore[no-untyped-def]
    collector, query = services
    project = await _project(http_stores)
    batch = [
        {
            "type": "track",
            "userId": "h1",
            "event": f"E{i}",
            "messageId": f"h-{i}",
            "timestamp": f"2026-05-0{i + 1}T10:00:00Z",
            "channel": "email",
        }
        for i in range(5)
    ]
    batch.append({"type": "track", "userId": "h1"})  # quarantined
    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # a retry: counted once
            async with http.post(
                collector.make_url("/v1/batch"), data=orjson.dumps({"batch": batch}), headers=basic(project.write_key)
            ) as resp:
                assert resp.status == 200 and (await resp.json())["accepted"] == 5

        async def visible():  # type: ignore[no-untyped-def]
            async with http.get(query.make_url("/v1/stats"), headers=basic(project.read_key)) as resp:
                stats = await resp.json()
            return stats if stats["events"] == 5 and stats["quarantined"] == 2 else None

        await wait_until(visible)
        async with http.get(query.make_url("/v1/customers/h1/events"), headers=basic(project.read_key)) as resp:
            body = await resp.json()
    assert [e["message_id"] for e in body["events"]] == [f"h-{i}" for i in range(5)]
    assert body["events"][0]["timestamp"] == "2026-05-01T10:00:00.000Z"


async def test_clickhouse_outage_is_absorbed_by_the_spool_then_drained(http_stores, services, server) -> None:  # type: ignore[no-untyped-def]
    collector, query = services
    project = await _project(http_stores)
    acked: list[str] = []
    errors: list[int] = []

    async def send(http: aiohttp.ClientSession, tag: str, batches: int) -> None:
        for b in range(batches):
            batch = [
                {"type": "track", "userId": f"o{i % 13}", "event": "Tick", "messageId": f"{tag}-{b}-{i}"}
                for i in range(20)
            ]
            async with http.post(
                collector.make_url("/v1/batch"), data=orjson.dumps({"batch": batch}), headers=basic(project.write_key)
            ) as resp:
                if resp.status == 200:
                    acked.extend(e["messageId"] for e in batch)
                else:
                    errors.append(resp.status)
            await asyncio.sleep(0.01)

    async with aiohttp.ClientSession() as http:
        await send(http, "before", 10)
        server.stop()  # ClickHouse goes away under steady load
        await send(http, "during", 100)
        async with http.get(collector.make_url("/readyz")) as resp:
            ready = await resp.json()
        assert resp.status == 503 and ready["checks"]["clickhouse"]["ok"] is False
        assert "error" in ready["checks"]["clickhouse"]
        spool = collector.app[SPOOL]
        assert spool.pending_bytes > 0 and spool.oldest_age_seconds() > 0
        async with http.get(collector.make_url("/metrics")) as resp:
            assert 'journeys_clickhouse_errors_total{operation="insert"}' in await resp.text()

        server.start()  # back, same address and data
        await send(http, "after", 10)
        await wait_until(lambda: _drained(spool), timeout=30)

        async def ready_again():  # type: ignore[no-untyped-def]
            async with http.get(collector.make_url("/readyz")) as resp:
                return resp.status == 200

        await wait_until(ready_again, timeout=15)
        seen: list[str] = []
        for c in range(13):
            async with http.get(
                query.make_url(f"/v1/customers/o{c}/events?limit=10000"), headers=basic(project.read_key)
            ) as resp:
                seen.extend(e["message_id"] for e in (await resp.json())["events"])
    assert errors == []
    assert len(acked) == 2400
    assert sorted(seen) == sorted(acked)  # 0 lost, 0 duplicated


async def _drained(spool) -> bool:  # type: ignore[no-untyped-def]
    return spool.pending_bytes == 0


async def test_slow_clickhouse_backpressure_503_at_the_spool_cap_never_a_silent_drop(  # type: ignore[no-untyped-def]
    http_stores, server, tmp_path
) -> None:
    """Each INSERT takes a second and carries at most 16 KiB: the spool (capped at 1 MiB) fills under load,
    the door answers 503 + Retry-After — never a 500, never a 200 for something it then drops — and once
    ClickHouse is fast again everything acknowledged is stored once and nothing refused is."""
    slow = dataclasses.replace(
        http_stores,
        settings=http_stores.settings.model_copy(
            update={"spool_dir": tmp_path / "slow-spool", "spool_max_bytes": 1024 * 1024, "insert_max_bytes": 16 * 1024}
        ),
    )
    collector = TestServer(create_collector(slow, Metrics()), host="127.0.0.1")
    await collector.start_server()
    project = await _project(http_stores)
    server.set_insert_delay(1.0)
    acked: list[str] = []
    refused: list[str] = []
    statuses: list[int] = []
    try:
        async with aiohttp.ClientSession() as http:
            for b in range(400):
                batch: list[dict[str, Any]] = [
                    {
                        "type": "track",
                        "userId": f"s{i % 7}",
                        "event": "Slow",
                        "messageId": f"slow-{b}-{i}",
                        "properties": {"pad": "p" * 300},
                    }
                    for i in range(40)
                ]
                async with http.post(
                    collector.make_url("/v1/batch"),
                    data=orjson.dumps({"batch": batch}),
                    headers=basic(project.write_key),
                ) as resp:
                    statuses.append(resp.status)
                    if resp.status == 200:
                        acked.extend(e["messageId"] for e in batch)
                    else:
                        assert resp.status == 503 and resp.headers["Retry-After"].isdigit(), await resp.text()
                        assert (await resp.json())["errors"][0]["field"] == "server"
                        refused.extend(e["messageId"] for e in batch)
                if len(refused) >= 200:
                    break
            assert refused, "the spool cap was never reached"
            async with http.get(collector.make_url("/readyz")) as resp:
                ready = await resp.json()
            assert resp.status == 503 and ready["checks"]["spool"]["ok"] is False
            server.set_insert_delay(0)  # ClickHouse is fast again
            await wait_until(lambda: _drained(collector.app[SPOOL]), timeout=60)
    finally:
        server.set_insert_delay(0)
        await collector.close()
    assert set(statuses) == {200, 503}
    _, rows = await http_stores.clickhouse.query(
        "SELECT message_id, count() FROM events WHERE project_id = {p:String} GROUP BY message_id", {"p": project.id}
    )
    assert {r[0] for r in rows} == set(acked)  # nothing acknowledged lost, nothing refused stored
    assert all(r[1] == 1 for r in rows)  # and nothing inserted twice


async def test_stage_facts_of_20k_customers_at_once_over_http(http_stores) -> None:  # type: ignore[no-untyped-def]
    """A refresh of 20 000 ids over HTTP: the ids, their customers and owners are bound parameters, which go in
    the request body (a URL that long is refused), for the statements that answer rows and for the
    INSERT … SELECTs that store the customers' inputs alike, in chunks whose fields ClickHouse takes
    (http_max_field_value_size: testkit/chhttp.py refuses a longer field as ClickHouse does)."""
    from journeys.events import EVENT_COLUMNS
    from query.maps import validate_map
    from query.facts.model import Definitions
    from query.facts.writer import REFRESH_CHUNK, StateWriter

    pid = "p_http20k"
    definitions = Definitions.of(
        [
            (
                validate_map(
                    {
                        "name": "m",
                        "stages": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}],
                        "touchpoints": [
                            {"id": "ta", "stage": "a", "match": {"event": "A"}},
                            {"id": "tb", "stage": "b", "match": {"event": "B"}},
                        ],
                    }
                ),
                1,
            )
        ],
        [],
    )
    ids = [f"customer-{n:06d}-{'x' * 24}" for n in range(REFRESH_CHUNK)]

    def rows(event: str, minute: int) -> bytes:
        values = {
            "project_id": pid,
            "type": "track",
            "event": event,
            "channel": "web",
            "touchpoint": "",
            "sentiment": "",
            "user_id": "",
            "anonymous_id": "",
            "group_id": "",
            "previous_id": "",
            "timestamp": f"2026-03-01 10:{minute:02d}:00.000",
            "original_timestamp": "2026-03-01 10:00:00.000",
            "sent_at": None,
            "received_at": "2026-03-01 11:00:00.000",
            "properties": "{}",
            "traits": "{}",
            "context": "{}",
        }
        return b"".join(
            orjson.dumps([{**values, "message_id": f"{event}-{i}", "distinct_id": i}[c] for c in EVENT_COLUMNS]) + b"\n"
            for i in ids
        )

    ch = http_stores.clickhouse
    writer = StateWriter(ch, http_stores.pg)
    await ch.insert_lines("events", EVENT_COLUMNS, rows("A", 1))
    await writer.refresh(pid, definitions, 5, set(ids))  # every customer from all of its events
    _, now = await ch.query("SELECT toUnixTimestamp64Milli(now64(3))")
    await ch.insert_lines("events", EVENT_COLUMNS, rows("B", 2))
    await writer.append(pid, definitions, 5, set(ids), int(now[0][0]) - 1)  # the new rows merged on
    _, moved = await ch.query(
        "SELECT sum(n) FROM stage_facts WHERE project_id = {p:String} AND build = 5 AND fact = 'move' AND stage = 1",
        {"p": pid},
    )
    assert moved == [(REFRESH_CHUNK,)]
