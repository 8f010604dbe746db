"""Faults on the way in: answers lost on the wire, a spool disk that fills up. Nothing acknowledged is lost,
nothing is counted twice, every refusal is a clear 503 that says when to retry.

The other faults have their tests beside the machinery they use: ClickHouse down and slow in
tests/test_clickhouse_http.py, SIGKILL in tests/test_restart.py, the spool's own disk-full handling in
tests/test_spool.py. ``python bench/faults.py`` runs all of them against real processes and prints figures.
"""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

from collector.appkeys import INSERTER
from collector.app import create_app as create_collector
from journeys.metrics import Metrics
from journeys_sdk import Client
from support import basic, wait_drained, wait_until, with_settings
from testkit.tcpproxy import CuttingProxy


async def _unique_raw_and_read(stores, project_id: str) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    """Distinct ids stored, physical rows (retries before any merge), rows through the reads' dedup."""
    _, rows = await stores.clickhouse.query(
        "SELECT uniqExact(message_id), count() FROM events WHERE project_id = {p:String}", {"p": project_id}
    )
    _, deduped = await stores.clickhouse.query(
        "SELECT count() FROM (SELECT message_id FROM events WHERE project_id = {p:String} LIMIT 1 BY message_id)",
        {"p": project_id},
    )
    return rows[0][0], rows[0][1], deduped[0][0]


async def test_sdk_retries_answers_lost_at_the_tcp_level_and_each_event_counts_once(  # type: ignore[no-untyped-def]
    collector, query, stores, project
) -> None:
    # Every third answer is dropped after the collector sent it in full: the batch is durable, the SDK
    # sees its connection reset with no response, and sends the batch again.
    proxy = await CuttingProxy("127.0.0.1", collector.port, cut=lambda n: n % 3 == 0).start()
    client = Client(project.write_key, host=proxy.url, upload_interval=0.05, upload_size=50, backoff_base=0.01)
    try:
        for i in range(1000):
            assert client.track(f"tcp-{i % 10}", "Clicked", {"i": i})
        assert await client.aflush(timeout=60)
    finally:
        client.shutdown()
        await proxy.close()
    await wait_drained(collector)
    assert proxy.cut_count >= 5 and client.stats.retries >= proxy.cut_count
    assert client.stats.sent == 1000 and client.stats.failed == 0
    unique, raw, deduped = await _unique_raw_and_read(stores, project.id)
    assert unique == deduped == 1000
    # Each lost answer's batch was stored twice physically (unless a merge folded it already).
    assert raw >= 1000
    print(f"\nlost answers {proxy.cut_count}, SDK retries {client.stats.retries}, physical rows {raw} for 1000 events")
    headers = basic(project.read_key)
    seen: list[int] = []
    async with aiohttp.ClientSession() as http:
        async with http.get(query.make_url("/v1/stats"), headers=headers) as resp:
            assert (await resp.json())["events"] == 1000
        for c in range(10):
            async with http.get(query.make_url(f"/v1/customers/tcp-{c}/events?limit=10000"), headers=headers) as resp:
                seen.extend(e["properties"]["i"] for e in (await resp.json())["events"])
    assert sorted(seen) == list(range(1000))


async def test_spool_disk_full_answers_503_then_recovers_and_loses_nothing(http, stores, project, tiny_disk) -> None:  # type: ignore[no-untyped-def]
    settings = with_settings(stores, spool_dir=tiny_disk / "spool")  # 64 MiB segments: the disk fills first
    server = TestServer(create_collector(settings, Metrics()), host="127.0.0.1")
    await server.start_server()
    acked: list[str] = []
    refused: list[str] = []

    async def send(tag: str) -> tuple[int, dict, dict]:
        batch: list[dict[str, Any]] = [
            {
                "type": "track",
                "userId": f"d{i % 5}",
                "event": "E",
                "messageId": f"{tag}-{i}",
                "properties": {"pad": "p" * 400},
            }
            for i in range(40)
        ]
        async with http.post(
            server.make_url("/v1/batch"), data=orjson.dumps({"batch": batch}), headers=basic(project.write_key)
        ) as resp:
            body = await resp.json()
            assert resp.status in (200, 503), (resp.status, body)
            (acked if resp.status == 200 else refused).extend(e["messageId"] for e in batch)
            return resp.status, body, dict(resp.headers)

    try:
        full = None
        for b in range(200):
            status, body, headers = await send(f"before-{b}")
            if status == 503:
                full = (body, headers)
                break
        assert full is not None, "the 1 MiB disk never filled"
        body, headers = full
        assert headers["Retry-After"].isdigit()
        reason = body["errors"][0]["reason"]  # ENOSPC, or a short write when part of the data fitted
        assert body["errors"][0]["field"] == "server" and ("No space left" in reason or "disk full" in reason), reason
        assert (await send("still-full"))[0] == 503  # still full: still refused, nothing half-written
        async with http.get(server.make_url("/readyz")) as resp:
            ready = await resp.json()
        assert resp.status == 503 and ready["checks"]["spool"]["ok"] is False and ready["checks"]["spool"]["error"]

        subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_disk)], check=True)  # space returns
        assert (await send("after"))[0] == 200

        async def ready_again() -> bool:
            async with http.get(server.make_url("/readyz")) as resp:
                return resp.status == 200

        await wait_until(ready_again)
        await wait_drained(server)
    finally:
        await server.close()
    unique, raw, deduped = await _unique_raw_and_read(stores, project.id)
    assert unique == deduped == len(acked) and raw == len(acked)
    _, rows = await stores.clickhouse.query(
        "SELECT message_id FROM events WHERE project_id = {p:String}", {"p": project.id}
    )
    stored = {r[0] for r in rows}
    assert stored == set(acked) and not stored & set(refused)


async def test_a_checkpoint_the_full_disk_refuses_is_written_again_not_the_rows(  # type: ignore[no-untyped-def]
    http, stores, project, tiny_disk
) -> None:
    """The rows reach ClickHouse, then the spool cannot write its checkpoint (disk full): the inserter must
    retry the checkpoint, not insert the same rows again (each retry would be another physical copy)."""
    settings = with_settings(stores, spool_dir=tiny_disk / "spool", insert_linger_ms=1500.0)
    server = TestServer(create_collector(settings, Metrics()), host="127.0.0.1")
    await server.start_server()
    filler = tiny_disk / "filler"
    try:
        batch = [{"type": "track", "userId": f"k{i}", "event": "E", "messageId": f"ck-{i}"} for i in range(50)]
        async with http.post(
            server.make_url("/v1/batch"), data=orjson.dumps({"batch": batch}), headers=basic(project.write_key)
        ) as resp:
            assert resp.status == 200
        # Durable in the spool; the inserter lingers 1.5 s. Fill what is left of the disk meanwhile.
        with open(filler, "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass

        async def stored() -> bool:
            return (await _unique_raw_and_read(stores, project.id))[0] == 50

        await wait_until(stored)
        await wait_until(lambda: _failed_and_retried(server))  # the checkpoint could not be written
        # While it keeps failing it stays unhealthy: its retry pauses do not count as recovering.
        inserter = server.app[INSERTER]
        deadline = asyncio.get_running_loop().time() + 1.5
        while asyncio.get_running_loop().time() < deadline:
            assert not inserter.healthy
            await asyncio.sleep(0)
        filler.unlink()
        await wait_drained(server)

        async def ready() -> bool:  # with no new event to insert: the checkpoint's retry alone recovers
            async with http.get(server.make_url("/readyz")) as resp:
                return resp.status == 200

        await wait_until(ready)
    finally:
        filler.unlink(missing_ok=True)
        await server.close()
    assert await _unique_raw_and_read(stores, project.id) == (50, 50, 50)


async def _failed_and_retried(server) -> bool:  # type: ignore[no-untyped-def]
    inserter = server.app[INSERTER]
    return not inserter.healthy and "No space left" in (inserter.last_error or "")
