"""Real stores for every test: one chDB engine and one embedded PostgreSQL per test session.

chDB hosts one engine path per process, so the session shares one ClickHouse; tests isolate themselves
by project (every test gets a fresh project, and every read is scoped by project). Collectors get a spool
directory of their own per test. Servers listen on real 127.0.0.1 ports.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from collector.app import create_app as create_collector
from journeys.config import Settings, load_settings
from journeys.keys import NewProject, create_project
from journeys.metrics import Metrics
from journeys.stores import Stores, open_stores
from support import with_settings
from query.app import create_app as create_query

_names = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers from what a test uses: ``browser`` for a test that takes a browser, ``needs_root`` for one
    that takes the ``tiny_disk`` (``slow`` is set on each test by hand)."""
    for item in items:
        used = getattr(item, "fixturenames", ())
        if "browser" in used:
            item.add_marker(pytest.mark.browser)
        if "tiny_disk" in used:
            item.add_marker(pytest.mark.needs_root)


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


@pytest.fixture
def tiny_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 1 MiB filesystem (tmpfs), so 'disk full' is the kernel's ENOSPC, not a simulation."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)
