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
from journeys.postgres import postgres_pools

#: KPI answers (and facts inserts) in flight at once per process; more wait for a connection.
LOCK_CONNECTIONS = 16


@dataclass(frozen=True)
class Stores:
    settings: Settings
    clickhouse: ClickHouse
    pg: asyncpg.Pool
    keys: KeyResolver
    # Connections that only ever hold the stage-facts view lock (query/facts/locks.py) for the length of a KPI
    # answer or a facts insert: apart from `pg`, so an answer holding one can still take `pg` connections for
    # its own reads, and a burst of answers can never use up the connections everything else needs.
    pg_locks: asyncpg.Pool | None = None


@asynccontextmanager
async def open_stores(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Stores]:
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    async with postgres_pools(settings, [(1, 10), (0, LOCK_CONNECTIONS)]) as (pg, pg_locks):
        clickhouse = await ClickHouse.connect(settings.effective_clickhouse_url)
        try:
            if migrate:
                async with pg.acquire() as conn:
                    await migrate_postgres(conn)
                    await migrate_clickhouse(clickhouse, settings.clickhouse_cluster, lock=conn)
            yield Stores(settings, clickhouse, pg, KeyResolver(pg, ttl=settings.key_cache_ttl_s), pg_locks)
        finally:
            await clickhouse.close()
