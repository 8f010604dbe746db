"""Schema files: ordered, idempotent, and the cluster variant valid by ClickHouse's own parser."""

from __future__ import annotations

import pytest

from journeys.migrate import clickhouse_migrations, migrate_clickhouse, migrate_postgres, render_clickhouse_sql


def test_files_apply_in_name_order() -> None:
    names = [m.name for m in clickhouse_migrations()]
    assert names == sorted(names) and names[0].startswith("0001_")


def test_single_node_rendering_has_no_cluster_parts() -> None:
    sql = "\n".join(s for m in clickhouse_migrations() for s in m.statements)
    assert "{{" not in sql and "ON CLUSTER" not in sql and "Replicated" not in sql and "Distributed" not in sql
    assert "ENGINE = ReplacingMergeTree(received_at)" in sql


def test_cluster_rendering_replicates_and_shards_by_customer() -> None:
    statements = [s for m in clickhouse_migrations("journeys") for s in m.statements]
    events_local, events_dist = statements[0], statements[1]
    assert events_local.startswith('CREATE TABLE IF NOT EXISTS events_local ON CLUSTER "journeys"')
    assert (
        "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', received_at)"
        in events_local
    )
    assert (
        "Distributed('journeys', currentDatabase(), events_local, cityHash64(project_id, distinct_id))" in events_dist
    )
    assert any(
        "ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')" in s for s in statements
    )


@pytest.mark.parametrize("cluster", ["", "journeys"])
async def test_every_rendered_statement_parses(stores, cluster: str) -> None:  # type: ignore[no-untyped-def]
    for migration in clickhouse_migrations(cluster):
        for statement in migration.statements:
            _, rows = await stores.clickhouse.query(f"EXPLAIN AST {statement}")
            assert rows, statement


def test_unknown_macro_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown schema macro"):
        render_clickhouse_sql("CREATE TABLE {{tabel events}} (a Int8) ENGINE = Memory")


async def test_migrations_are_idempotent_on_live_stores(stores) -> None:  # type: ignore[no-untyped-def]
    assert await migrate_clickhouse(stores.clickhouse) == []
    async with stores.pg.acquire() as conn:
        assert await migrate_postgres(conn) == []
    _, rows = await stores.clickhouse.query("SELECT name FROM journeys_schema_migrations ORDER BY name")
    assert [r[0] for r in rows] == [m.name for m in clickhouse_migrations()]


def test_distributed_tables_default_what_their_local_tables_default() -> None:
    """A Distributed table fills a column an INSERT leaves out with its own default and the shard stores
    that value, so a column added to a local table with a DEFAULT needs the same DEFAULT on the Distributed
    table over it (inserted_at went without one in 0005: every row stored 1970 on a cluster)."""
    import re

    from journeys.migrate import _files

    local_adds = re.compile(
        r"ALTER TABLE \{\{table (\w+)\}\} \{\{on_cluster\}\} ADD COLUMN IF NOT EXISTS (\w+) (.+?) DEFAULT (.+?);"
    )
    distributed_changes = re.compile(
        r"\{\{alter_distributed (\w+) (?:ADD COLUMN IF NOT EXISTS|MODIFY COLUMN) (\w+) (.+?)\}\}"
    )
    wanted: dict[tuple[str, str], str] = {}
    declared: dict[tuple[str, str], str] = {}
    for _, sql in _files("clickhouse"):
        for table, column, _type, default in local_adds.findall(sql):
            wanted[table, column] = f"DEFAULT {default.strip()}"
        for table, column, definition in distributed_changes.findall(sql):
            declared[table, column] = definition
    assert wanted, "no local column with a DEFAULT found: the pattern no longer matches the migrations"
    for (table, column), default in wanted.items():
        assert declared.get((table, column), "").endswith(default), (table, column, declared.get((table, column)))


async def test_one_process_migrates_clickhouse_at_a_time(stores) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from journeys.migrate import _CH_LOCK_ID

    async with stores.pg.acquire() as holder, stores.pg.acquire() as waiter:
        await holder.execute("SELECT pg_advisory_lock($1)", _CH_LOCK_ID)
        try:
            waiting = asyncio.create_task(migrate_clickhouse(stores.clickhouse, lock=waiter))
            await asyncio.sleep(0.5)
            assert not waiting.done()
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1)", _CH_LOCK_ID)
        assert await asyncio.wait_for(waiting, 30) == []


async def test_on_a_cluster_a_migration_recorded_on_any_node_counts(stores) -> None:  # type: ignore[no-untyped-def]
    from journeys.migrate import applied_clickhouse_sql

    sql = applied_clickhouse_sql("journeys")
    assert "clusterAllReplicas('journeys', currentDatabase(), journeys_schema_migrations)" in sql
    _, rows = await stores.clickhouse.query(f"EXPLAIN AST {sql}")  # no cluster here: ClickHouse's parser
    assert rows
