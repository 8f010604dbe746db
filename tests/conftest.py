"""Real stores for every test: one chDB engine and one embedded PostgreSQL per test session.

chDB hosts one engine path per process, so the session shares one ClickHouse; tests isolate themselves
by project (every test gets a fresh project, and every read is scoped by project). Collectors get a spool
directory of their own per test. Servers listen on real 127.0.0.1 ports.
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from collector.app import create_app as create_collector
from journeys.config import Settings, load_settings
from journeys.keys import NewProject, create_project
from journeys.metrics import Metrics
from journeys.stores import Stores, open_stores
from query.app import create_app as create_query

_names = itertools.count()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("journeys-data")


@pytest.fixture(scope="session")
def settings(data_dir: Path) -> Settings:
    for name in list(os.environ):
        if name.startswith("JOURNEYS_") or name in ("CLICKHOUSE_URL", "DATABASE_URL"):
            del os.environ[name]
    return load_settings(data_dir=data_dir, insert_linger_ms=5)


@pytest.fixture(scope="session")
async def stores(settings: Settings) -> AsyncIterator[Stores]:
    async with open_stores(settings) as opened:
        yield opened


@pytest.fixture
async def project(stores: Stores) -> NewProject:
    async with stores.pg.acquire() as conn:
        return await create_project(conn, f"test-{os.getpid()}-{next(_names)}")


def with_settings(stores: Stores, **changes: object) -> Stores:
    """The same stores with some settings changed (settings are frozen; this makes a copy)."""
    return dataclasses.replace(stores, settings=stores.settings.model_copy(update=changes))


@pytest.fixture
def collector_stores(stores: Stores, tmp_path: Path) -> Stores:
    return with_settings(stores, spool_dir=tmp_path / "spool")


@pytest.fixture
async def collector(collector_stores: Stores) -> AsyncIterator[TestServer]:
    server = TestServer(create_collector(collector_stores, Metrics()), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def query(stores: Stores) -> AsyncIterator[TestServer]:
    server = TestServer(create_query(stores, Metrics()), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def basic(key: str) -> dict[str, str]:
    """Segment's convention: the key as HTTP Basic username, empty password."""
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


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
    from collector.app import SPOOL

    spool = server.app[SPOOL]

    async def drained() -> bool:
        return spool.durable_position > 0 and spool.pending_bytes == 0

    await wait_until(drained)
