"""Crash and restart of the real service process: every acknowledged event is stored exactly once."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from support import basic, wait_until
from testkit.service import Service, create_project, stop_leftover_postgres


@pytest.fixture
def data_dir(tmp_path: Path):  # type: ignore[no-untyped-def]
    yield tmp_path
    stop_leftover_postgres(tmp_path)


async def _stats(http: aiohttp.ClientSession, service: Service, read_key: str) -> dict:
    async with http.get(f"{service.query}/v1/stats", headers=basic(read_key)) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_sigkill_with_non_empty_spool_then_restart_replays_everything_once(data_dir: Path) -> None:
    keys = create_project(data_dir, "crash")
    # A linger of an hour: the first process acknowledges (fsyncs) everything but inserts nothing.
    first = Service(data_dir, JOURNEYS_INSERT_LINGER_MS="3600000").start()
    sent: list[str] = []
    async with aiohttp.ClientSession() as http:
        try:
            for b in range(20):
                batch = [
                    {"type": "track", "userId": f"c{i % 7}", "event": "Visit", "messageId": f"m-{b}-{i}"}
                    for i in range(50)
                ]
                async with http.post(
                    f"{first.collector}/v1/batch", data=orjson.dumps({"batch": batch}), headers=basic(keys["write_key"])
                ) as resp:
                    assert resp.status == 200, await resp.text()
                sent.extend(e["messageId"] for e in batch)
            assert (await _stats(http, first, keys["read_key"]))["events"] == 0, "inserted before the crash"
            assert sum(p.stat().st_size for p in (data_dir / "spool").glob("*.seg")) > 0
        finally:
            first.kill()

        second = Service(data_dir).start()
        try:

            async def all_there() -> dict:
                stats = await _stats(http, second, keys["read_key"])
                return stats if stats["events"] >= len(sent) else {}

            stats = await wait_until(all_there, timeout=30)
            assert stats["events"] == len(sent) == 1000
            seen: list[str] = []
            for c in range(7):
                async with http.get(
                    f"{second.query}/v1/customers/c{c}/events?limit=10000", headers=basic(keys["read_key"])
                ) as resp:
                    seen.extend(e["message_id"] for e in (await resp.json())["events"])
            assert sorted(seen) == sorted(sent)
            async with http.get(f"{second.collector}/readyz") as resp:
                ready = await resp.json()
            assert ready["checks"]["spool"]["pending_bytes"] == 0
        finally:
            assert second.stop() == 0


async def test_sigterm_drains_the_spool_before_exit(data_dir: Path) -> None:
    keys = create_project(data_dir, "drain")
    service = Service(data_dir, JOURNEYS_INSERT_LINGER_MS="1000").start()
    async with aiohttp.ClientSession() as http:
        batch = [{"type": "track", "userId": "d", "event": "E", "messageId": f"d-{i}"} for i in range(100)]
        async with http.post(
            f"{service.collector}/v1/batch", data=orjson.dumps({"batch": batch}), headers=basic(keys["write_key"])
        ) as resp:
            assert resp.status == 200
    began = time.monotonic()
    assert service.stop() == 0
    assert time.monotonic() - began < 30
    # Drained at shutdown: the checkpoint covers everything written.
    spool = data_dir / "spool"
    written = sum(p.stat().st_size for p in spool.glob("*.seg"))
    first_base = min(int(p.stem) for p in spool.glob("*.seg"))
    assert int((spool / "checkpoint").read_text()) == first_base + written


async def test_sigkill_mid_load_every_acknowledged_event_is_stored_exactly_once(data_dir: Path) -> None:
    """Killed while requests are in flight: every 200'd event is stored once; an event whose request got no
    answer may or may not be (the client retries it), but never twice."""
    import asyncio

    keys = create_project(data_dir, "midload")
    first = Service(data_dir, JOURNEYS_INSERT_LINGER_MS="50").start()
    acked: list[str] = []
    unanswered: list[str] = []
    sent = 0

    async def sender(http: aiohttp.ClientSession, worker: int) -> None:
        nonlocal sent
        for b in range(10_000):
            batch = [
                {"type": "track", "userId": f"k{i % 9}", "event": "Load", "messageId": f"k-{worker}-{b}-{i}"}
                for i in range(25)
            ]
            sent += len(batch)
            try:
                async with http.post(
                    f"{first.collector}/v1/batch", data=orjson.dumps({"batch": batch}), headers=basic(keys["write_key"])
                ) as resp:
                    assert resp.status == 200, await resp.text()
                    acked.extend(e["messageId"] for e in batch)
            except aiohttp.ClientError:
                unanswered.extend(e["messageId"] for e in batch)  # killed under this request
                return

    async with aiohttp.ClientSession() as http:
        senders = [asyncio.create_task(sender(http, w)) for w in range(6)]
        try:

            async def under_load() -> bool:
                return len(acked) >= 3000

            await wait_until(under_load, timeout=60)
            first.kill()  # SIGKILL with requests in flight
            await asyncio.wait_for(asyncio.gather(*senders), 30)
        finally:
            for task in senders:
                task.cancel()
            if first.proc is not None and first.proc.poll() is None:
                first.kill()
        assert unanswered, "the kill landed between requests; nothing was in flight"

        second = Service(data_dir).start()
        try:

            async def caught_up() -> dict:
                stats = await _stats(http, second, keys["read_key"])
                return stats if stats["events"] >= len(acked) else {}

            await wait_until(caught_up, timeout=60)
            seen: list[str] = []
            for c in range(9):
                async with http.get(
                    f"{second.query}/v1/customers/k{c}/events?limit=10000", headers=basic(keys["read_key"])
                ) as resp:
                    seen.extend(e["message_id"] for e in (await resp.json())["events"])
        finally:
            assert second.stop() == 0
    assert len(seen) == len(set(seen))  # nothing twice
    assert set(acked) <= set(seen)  # nothing acknowledged lost
    assert set(seen) <= set(acked) | set(unanswered)  # nothing that was never sent
