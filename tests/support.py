"""Helpers the tests share (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import dataclasses
import gzip

import orjson

from journeys.stores import Stores
from testkit.net import basic as basic  # the tests' one import line for it; the benches use it too


def with_settings(stores: Stores, **changes: object) -> Stores:
    """The same stores with some settings changed (settings are frozen; this makes a copy)."""
    return dataclasses.replace(stores, settings=stores.settings.model_copy(update=changes))


def gzipped(document: object) -> bytes:
    return gzip.compress(orjson.dumps(document))


async def wait_until(predicate, timeout: float = 15.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll an async predicate until it returns something truthy; fail with the last value on timeout."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")


async def stored_rows(stores: Stores, project_id: str, table: str = "events") -> int:
    """Raw row count in ClickHouse, duplicates included."""
    _, rows = await stores.clickhouse.query(
        f"SELECT count() FROM {table} WHERE project_id = {{p:String}}", {"p": project_id}
    )
    return rows[0][0]


async def wait_stored(stores: Stores, project_id: str, n: int, table: str = "events") -> int:
    async def enough() -> int:
        count = await stored_rows(stores, project_id, table)
        return count if count >= n else 0

    return await wait_until(enough)


async def wait_drained(server) -> None:  # type: ignore[no-untyped-def]
    """Wait until a collector's spool is fully inserted into ClickHouse (checkpoint caught up)."""
    from collector.appkeys import SPOOL

    spool = server.app[SPOOL]

    async def drained() -> bool:
        return spool.durable_position > 0 and spool.pending_bytes == 0

    await wait_until(drained)
