"""``journeys quarantine replay --project P [--since ISO]``: take in the quarantined events that pass today.

Like ``journeys customer delete``, it works with the service stopped or running:

* **directly**, when this process can open ClickHouse and the collector's spool (the embedded default with
  ``journeys up`` stopped, or real servers with no collector sharing this data directory): it runs
  :func:`collector.quarantine.replay` with a spool and an inserter of its own, on the collector's spool
  directory, and waits until ClickHouse has each page's events before removing their quarantine rows. Events
  left in the spool by an interruption go in on the next replay or the next ``journeys up``;
* **through the running collector** otherwise (``POST /v1/quarantine/replay``), with a one-time admin key
  that is revoked right after.

Either way the events take the collector's durable path: the spool, then ClickHouse, then identity links.
Imports stay inside the functions: ``journeys --help`` must not load the collector.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from cli.commands import Commands
from cli.context import open_project
from journeys.config import Settings

#: How long the direct replay waits for ClickHouse to take a page of replayed events before giving up
#: (the events stay in the spool; their quarantine rows stay too).
DRAIN_TIMEOUT_S = 300.0


def add_commands(commands: Commands) -> None:
    actions = commands.group(
        "quarantine", help="events kept aside by validation (docs/quarantine.md)", dest="quarantine_command"
    )
    replay = actions.add(
        "replay",
        run,
        help="re-validate a project's quarantined events with today's rules and take in, once, those that pass",
    )
    replay.add_argument("--project", required=True, help="project name or id")
    replay.add_argument("--since", help="only events quarantined at or after this ISO 8601 time (naive = UTC)")
    replay.add_argument("--json", action="store_true", help="print the report as JSON")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    from journeys.keys import add_key, revoke_key
    from journeys.quarantine import SinceError, parse_since

    since_ms = 0
    if args.since is not None:
        try:
            since_ms = parse_since(args.since)
        except SinceError as exc:
            print(f"error: --since {exc}", file=sys.stderr)
            return 2

    async with open_project(settings, args.project) as project:
        report = await replay_direct(settings, project.id, since_ms)
        if report is None:  # the stores are in use: the running collector does it
            secret = await add_key(project.conn, project.id, "admin")
            try:
                report = await asyncio.to_thread(_replay_via_service, settings, args.since, secret)
            finally:
                await revoke_key(project.conn, secret)
    _print(report, args.json)
    return 0


async def replay_direct(settings: Settings, project_id: str, since_ms: int = 0) -> dict[str, Any] | None:
    """The replay in this process; ``None`` when ClickHouse (embedded) or the spool is another process's."""
    from collector.accept import Limits
    from collector.identity import IdentityGraph
    from collector.inserter import Inserter
    from collector.quarantine import record_bytes_for, replay
    from collector.spool import Spool, SpoolError
    from journeys.clickhouse import ClickHouse, ClickHouseError
    from journeys.metrics import Metrics

    try:
        clickhouse = await ClickHouse.connect(settings.effective_clickhouse_url)
    except ClickHouseError as exc:
        if "in use by another process" in str(exc):
            return None
        raise
    try:
        try:
            spool = await Spool(
                settings.resolved_spool_dir,
                max_bytes=settings.spool_max_bytes,
                segment_bytes=settings.spool_segment_bytes,
            ).open()
        except SpoolError as exc:
            if "in use by another process" in str(exc):
                return None
            raise
        inserter = Inserter(
            spool,
            clickhouse,
            Metrics(),
            max_bytes=settings.insert_max_bytes,
            linger_s=0.0,
            identity=IdentityGraph(clickhouse),
        )
        inserter.start()

        async def append(records: list[bytes]) -> None:
            await spool.append_waiting(records, DRAIN_TIMEOUT_S)

        async def in_clickhouse() -> None:
            """Quarantine rows go only once ClickHouse has the events (nothing else drains this spool)."""
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while spool.pending_bytes:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"ClickHouse did not take the replayed events within {DRAIN_TIMEOUT_S:g} s "
                        f"({inserter.last_error or 'no error reported'}); they wait in {settings.resolved_spool_dir} "
                        "and go in on the next replay or `journeys up`, and their quarantine rows were kept"
                    )
                await asyncio.sleep(0.02)

        try:
            report = await replay(
                clickhouse,
                project_id,
                append,
                cluster=settings.clickhouse_cluster,
                since_ms=since_ms,
                limits=Limits.of(settings),
                before_delete=in_clickhouse,
                record_bytes=record_bytes_for(spool),
            )
        finally:
            await inserter.stop(drain_timeout=30.0)
            await spool.close()
        return report.body()
    finally:
        await clickhouse.close()


def _replay_via_service(settings: Settings, since: str | None, secret: str) -> dict[str, Any]:
    from journeys.http import ServiceRefused, post_to_service

    host = "127.0.0.1" if settings.collector_host in ("0.0.0.0", "::") else settings.collector_host
    try:
        return post_to_service(
            f"http://{host}:{settings.collector_port}/v1/quarantine/replay", {"since": since} if since else {}, secret
        )
    except ServiceRefused as exc:
        why = "; ".join(f"{e.get('field')}: {e.get('reason')}" for e in exc.errors)
        raise RuntimeError(f"the collector refused the replay ({exc.status}): {why}") from None


def _print(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        import json

        print(json.dumps(report))
        return
    print(f"replayed {report['replayed']} (quarantine rows removed: {report['removed_rows']})")
    print(f"still failing {report['still_failing']}")
    for item in report["failing"]:
        print(f"  {item['count']:>8}  {item['field']}: {item['reason']}")
