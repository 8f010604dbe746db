"""Schema migrations: plain SQL files under ``migrations/``, applied in name order, each idempotent.

ClickHouse files carry a few macros so that one setting (``JOURNEYS_CLICKHOUSE_CLUSTER``) renders the
cluster variant of the same schema:

``{{table NAME}}``
    ``NAME`` on one node; ``NAME_local`` on a cluster (the Distributed table takes ``NAME``).
``{{on_cluster}}``
    nothing, or ``ON CLUSTER "name"``.
``{{engine ENGINE(args)}}``
    ``ENGINE(args)``, or ``ReplicatedENGINE('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', args)``.
``{{distributed NAME SHARDING_KEY}}``
    nothing, or the ``Distributed`` table ``NAME`` over ``NAME_local``, sharded by ``SHARDING_KEY``.
``{{alter_distributed NAME CHANGE}}``
    nothing, or ``ALTER TABLE NAME ON CLUSTER "name" CHANGE``: a column added to ``NAME_local`` must be
    added to the Distributed table over it too.

Queries always address ``NAME``: on a cluster that is the Distributed table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from journeys.clickhouse import ClickHouse, quote_identifier

_MACRO = re.compile(r"\{\{\s*(\w+)\s*([^}]*?)\s*\}\}")
_ENGINE = re.compile(r"^(\w+)\s*(?:\((.*)\))?$", re.S)


@dataclass(frozen=True)
class Migration:
    name: str
    statements: list[str]


def render_clickhouse_sql(sql: str, cluster: str = "") -> str:
    """Expand the schema macros for one node (``cluster=""``) or for ``cluster``."""

    def expand(match: re.Match[str]) -> str:
        macro, arg = match.group(1), match.group(2).strip()
        if macro == "on_cluster":
            return f"ON CLUSTER {quote_identifier(cluster)}" if cluster else ""
        if macro == "table":
            return f"{arg}_local" if cluster else arg
        if macro == "engine":
            if not cluster:
                return arg
            parsed = _ENGINE.match(arg)
            if not parsed:
                raise ValueError(f"cannot parse engine macro {arg!r}")
            engine, args = parsed.group(1), (parsed.group(2) or "").strip()
            replicated = f"Replicated{engine}('/clickhouse/tables/{{shard}}/{{database}}/{{table}}', '{{replica}}'"
            return replicated + (f", {args})" if args else ")")
        if macro == "distributed":
            if not cluster:
                return ""
            table, _, key = arg.partition(" ")
            if not key.strip():
                raise ValueError(f"distributed macro needs a table and a sharding key: {arg!r}")
            quoted = cluster.replace("'", "\\'")
            return (
                f"CREATE TABLE IF NOT EXISTS {table} ON CLUSTER {quote_identifier(cluster)} AS {table}_local\n"
                f"ENGINE = Distributed('{quoted}', currentDatabase(), {table}_local, {key.strip()})"
            )
        if macro == "alter_distributed":
            if not cluster:
                return ""
            table, _, change = arg.partition(" ")
            return f"ALTER TABLE {table} ON CLUSTER {quote_identifier(cluster)} {change.strip()}"
        raise ValueError(f"unknown schema macro {{{{{macro}}}}}")

    return _MACRO.sub(expand, sql)


def split_statements(sql: str) -> list[str]:
    """Split on ``;`` at the end of a line; drop comments-only and empty statements."""
    statements = []
    for chunk in re.split(r";\s*(?:\n|$)", sql):
        lines = [line for line in chunk.splitlines() if not line.strip().startswith("--")]
        text = "\n".join(lines).strip()
        if text:
            statements.append(text)
    return statements


def _files(kind: str) -> list[tuple[str, str]]:
    folder = resources.files("journeys") / "migrations" / kind
    entries = sorted((p.name, p.read_text(encoding="utf-8")) for p in folder.iterdir() if p.name.endswith(".sql"))
    return entries


def clickhouse_migrations(cluster: str = "") -> list[Migration]:
    return [
        Migration(name, split_statements(render_clickhouse_sql(sql, cluster))) for name, sql in _files("clickhouse")
    ]


def postgres_migrations() -> list[Migration]:
    return [Migration(name, [sql]) for name, sql in _files("postgres")]


async def migrate_clickhouse(ch: ClickHouse, cluster: str = "", *, lock: asyncpg.Connection | None = None) -> list[str]:
    """Apply pending ClickHouse migrations; return the names applied now.

    Every statement is ``IF NOT EXISTS``-safe, so a run interrupted half-way is simply run again. Not every
    migration is free to run twice, though (0007 copies every stored event), so with ``lock`` (a PostgreSQL
    connection: every service shares the database) one process migrates at a time, and on a cluster a
    migration recorded on any node counts: the record table is one plain table per node, and a load
    balancer sends each process to whichever node it likes.
    """
    if lock is not None:
        await lock.execute("SELECT pg_advisory_lock($1)", _CH_LOCK_ID)
    try:
        return await _migrate_clickhouse(ch, cluster)
    finally:
        if lock is not None:
            await lock.execute("SELECT pg_advisory_unlock($1)", _CH_LOCK_ID)


def applied_clickhouse_sql(cluster: str = "") -> str:
    """The migrations recorded as applied: on a cluster, on any node that answers."""
    if not cluster:
        return "SELECT DISTINCT name FROM journeys_schema_migrations"
    quoted = cluster.replace("\\", "\\\\").replace("'", "\\'")
    return (
        f"SELECT DISTINCT name FROM clusterAllReplicas('{quoted}', currentDatabase(), journeys_schema_migrations) "
        "SETTINGS skip_unavailable_shards = 1"
    )


async def _migrate_clickhouse(ch: ClickHouse, cluster: str) -> list[str]:
    on_cluster = f"ON CLUSTER {quote_identifier(cluster)}" if cluster else ""
    await ch.command(
        f"CREATE TABLE IF NOT EXISTS journeys_schema_migrations {on_cluster} "
        "(name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = MergeTree ORDER BY name"
    )
    _, rows = await ch.query(applied_clickhouse_sql(cluster))
    done = {row[0] for row in rows}
    applied = []
    for migration in clickhouse_migrations(cluster):
        if migration.name in done:
            continue
        for statement in migration.statements:
            await ch.command(statement)
        await ch.command("INSERT INTO journeys_schema_migrations (name) SELECT {name:String}", {"name": migration.name})
        applied.append(migration.name)
    return applied


_PG_LOCK_ID = 0x6A6F75726E657973  # "journeys": one migrator at a time across processes
_CH_LOCK_ID = _PG_LOCK_ID + 1  # the same for ClickHouse's migrations


async def migrate_postgres(conn: asyncpg.Connection) -> list[str]:
    """Apply pending PostgreSQL migrations in one transaction each, under an advisory lock."""
    applied = []
    await conn.execute("SELECT pg_advisory_lock($1)", _PG_LOCK_ID)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS journeys_schema_migrations "
            "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM journeys_schema_migrations")}
        for migration in postgres_migrations():
            if migration.name in done:
                continue
            async with conn.transaction():
                for statement in migration.statements:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO journeys_schema_migrations (name) VALUES ($1)", migration.name)
            applied.append(migration.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _PG_LOCK_ID)
    return applied
