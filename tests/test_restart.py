"""Crash and restart of the real service process: every acknowledged event is stored exactly once."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from support import basic, wait_until
from service import Service, create_project, stop_leftover_postgres


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
                async with http.post(f"{first.collector}/v1/batch", data=orjson.dumps({"batch": batch}),
                                     headers=basic(keys["write_key"])) as resp:
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
                async with http.get(f"{second.query}/v1/customers/c{c}/events?limit=10000",
                                    headers=basic(keys["read_key"])) as resp:
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
        async with http.post(f"{service.collector}/v1/batch", data=orjson.dumps({"batch": batch}),
                             headers=basic(keys["write_key"])) as resp:
            assert resp.status == 200
    began = time.monotonic()
    assert service.stop() == 0
    assert time.monotonic() - began < 30
    # Drained at shutdown: the checkpoint covers everything written.
    spool = data_dir / "spool"
    written = sum(p.stat().st_size for p in spool.glob("*.seg"))
    first_base = min(int(p.stem) for p in spool.glob("*.seg"))
    assert int((spool / "checkpoint").read_text()) == first_base + written
