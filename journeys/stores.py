"""Open both stores once per process, migrated, and hand them to the services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from journeys.clickhouse import ClickHouse
from journeys.config import Settings
from journeys.keys import KeyResolver
from journeys.migrate import migrate_clickhouse, migrate_postgres
from journeys.postgres import postgres_pool


@dataclass(frozen=True)
class Stores:
    settings: Settings
    clickhouse: ClickHouse
    pg: asyncpg.Pool
    keys: KeyResolver


@asynccontextmanager
async def open_stores(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Stores]:
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    async with postgres_pool(settings) as pg:
        clickhouse = await ClickHouse.connect(settings.effective_clickhouse_url)
        try:
            if migrate:
                async with pg.acquire() as conn:
                    await migrate_postgres(conn)
                    await migrate_clickhouse(clickhouse, settings.clickhouse_cluster, lock=conn)
            yield Stores(settings, clickhouse, pg, KeyResolver(pg, ttl=settings.key_cache_ttl_s))
        finally:
            await clickhouse.close()
