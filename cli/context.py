"""What a management command works in: a migrated PostgreSQL connection, and the project it was named.

Management commands (projects, keys, maps, alerts, email keys, imports…) use PostgreSQL only: they must
work beside a running ``journeys up``, which owns the embedded ClickHouse (one process per chDB directory).
Each opens one connection for its run, through :func:`open_postgres`, or :func:`open_project` when it acts
on a project given by name or id; an unknown project is one line on stderr and exit code 1, said the same
way by every command (``main`` prints a :class:`~journeys.errors.JourneysError`'s message).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from journeys.config import Settings

if TYPE_CHECKING:  # asyncpg stays unloaded for `journeys --help`
    import asyncpg


@asynccontextmanager
async def open_postgres(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """One connection to a migrated PostgreSQL (the embedded server, started if need be, or ``DATABASE_URL``)."""
    from journeys.migrate import migrate_postgres
    from journeys.postgres import postgres_pool

    async with postgres_pool(settings, max_size=1) as pool:
        async with pool.acquire() as conn:
            await migrate_postgres(conn)
            yield conn


@dataclass(frozen=True)
class ProjectContext:
    """The project a command was named, and the connection it works on."""

    conn: asyncpg.Connection
    id: str


@asynccontextmanager
async def open_project(settings: Settings, name_or_id: str) -> AsyncIterator[ProjectContext]:
    """:func:`open_postgres`, and the project named (by name or id); raises ``ProjectError`` if there is none."""
    from journeys.keys import ProjectError, find_project

    async with open_postgres(settings) as conn:
        project_id = await find_project(conn, name_or_id)
        if project_id is None:
            raise ProjectError(f"no project named {name_or_id!r} (journeys project create NAME makes one)")
        yield ProjectContext(conn, project_id)
