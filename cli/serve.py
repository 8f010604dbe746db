"""``journeys up`` (run the collector and the query service) and ``journeys migrate``.

This module is the composition root: it is the one place that wires the shared stores into the collector
and query apps, so it imports both (inside the functions: ``journeys --help`` must not load them); nothing
in ``journeys/`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence

from cli.commands import Commands
from journeys.config import Settings

log = logging.getLogger("journeys")


def add_commands(commands: Commands) -> None:
    up = commands.add("up", run, needs_data=False, help="run the collector and the query service in one process")
    up.add_argument("--only", choices=["collector", "query"], help="run just one service (for separate containers)")
    commands.add(
        "migrate", run, needs_data=False, help="apply pending ClickHouse and PostgreSQL migrations (idempotent)"
    )


async def run(settings: Settings, args: argparse.Namespace) -> int:
    if args.command == "up":
        await serve(settings, [args.only] if args.only else ["collector", "query"])
    else:
        await migrate(settings)
    return 0


async def serve(settings: Settings, services: Sequence[str]) -> None:
    from aiohttp import web

    from collector.app import create_app as create_collector
    from journeys.metrics import Metrics
    from journeys.stores import open_stores
    from query.app import create_app as create_query

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async with open_stores(settings) as stores:
        plan = []
        # A registry per service, even in one process: each port's /metrics exports its own service's series
        # only, so a Prometheus scraping both ports counts nothing twice.
        if "collector" in services:
            plan.append(
                ("collector", create_collector(stores, Metrics()), settings.collector_host, settings.collector_port)
            )
        if "query" in services:
            plan.append(("query", create_query(stores, Metrics()), settings.query_host, settings.query_port))
        _tune_gc()
        runners = []
        try:
            for name, app, host, port in plan:
                runner = web.AppRunner(app, access_log=None, handle_signals=False)
                await runner.setup()
                runners.append(runner)
                site = web.TCPSite(runner, host, port, reuse_address=True)
                await site.start()
                bound = runner.addresses[0] if runner.addresses else (host, port)
                log.info("%s listening on http://%s:%s", name, bound[0], bound[1])
            print("journeys is up: " + ", ".join(f"{n} http://{h}:{p}" for n, _, h, p in plan), flush=True)
            await stop.wait()
            log.info("shutting down")
        finally:
            # Stop taking requests first, then let each app's cleanup flush its spool and close.
            for runner in reversed(runners):
                await runner.cleanup()


def _tune_gc() -> None:
    """Ingest allocates millions of short-lived dicts and lists that reference counting frees; the cyclic
    GC mostly rescans long-lived startup objects (modules, pydantic schemas). Freeze those and collect
    young objects less often: measured ~15 % of the request thread's time before (bench/README.md)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


async def migrate(settings: Settings) -> None:
    from journeys.stores import open_stores

    async with open_stores(settings, migrate=False) as stores:
        from journeys.migrate import migrate_clickhouse, migrate_postgres

        async with stores.pg.acquire() as conn:
            pg = await migrate_postgres(conn)
            ch = await migrate_clickhouse(stores.clickhouse, settings.clickhouse_cluster, lock=conn)
    print(f"PostgreSQL: {', '.join(pg) or 'up to date'}")
    print(f"ClickHouse: {', '.join(ch) or 'up to date'}")
