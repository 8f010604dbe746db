"""``journeys map preview FILE --project P``: the KPIs a draft map would give, printed, publishing nothing.

It computes the preview in this process when the stores are free (query/kpi_preview.py), and otherwise asks
the running query service (``POST /v1/kpis/preview``) with a one-time read key, revoked right after — the
embedded ClickHouse belongs to one process at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.parse
from collections.abc import Mapping
from typing import Any

from cli.commands import Commands
from cli.context import open_project
from cli.definitions import read_document
from journeys.config import Settings


def add_commands(commands: Commands) -> None:
    """Add ``preview`` to the ``map`` group (cli/definitions.py makes it)."""
    preview = commands.group("map").add(
        "preview", run, help="the KPIs a draft map would give over all data; publishes nothing"
    )
    preview.add_argument("file", help="the draft map: YAML or JSON file, - for stdin")
    preview.add_argument("--project", required=True, help="project name or id")
    preview.add_argument("--segment-file", help="a draft segment too (joins, or replaces its namesake)")
    preview.add_argument("--segment", help="a segment name, or * for all customers and every segment (default: all)")
    preview.add_argument("--from", dest="first", help="first day, YYYY-MM-DD (default: 30 days ending --to)")
    preview.add_argument("--to", dest="last", help="last day, YYYY-MM-DD (default: today, UTC)")
    preview.add_argument("--json", action="store_true", help="print the answer as JSON (as the endpoint gives it)")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    from journeys.http import ApiError
    from journeys.keys import add_key, revoke_key

    map_doc = read_document(args.file)
    segment_doc = read_document(args.segment_file) if args.segment_file else None
    params = {k: v for k, v in (("segment", args.segment), ("from", args.first), ("to", args.last)) if v}
    async with open_project(settings, args.project) as project:
        try:
            result = await _direct(settings, project.conn, project.id, map_doc, segment_doc, params)
            if result is None:  # the stores are in use: the running query service computes it
                secret = await add_key(project.conn, project.id, "read")
                try:
                    body = {"map": map_doc, **({"segment": segment_doc} if segment_doc is not None else {})}
                    result = await asyncio.to_thread(_via_service, settings, body, params, secret)
                finally:
                    await revoke_key(project.conn, secret)
        except ApiError as exc:
            for error in exc.errors:
                print(f"error: {error['field']}: {error['reason']}", file=sys.stderr)
            return 1
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


async def _direct(
    settings: Settings, conn: Any, project_id: str, map_doc: Any, segment_doc: Any, params: dict[str, str]
) -> Mapping[str, Any] | None:
    """The preview in this process; ``None`` when the embedded ClickHouse is another process's."""
    from journeys.clickhouse import ClickHouse, ClickHouseError
    from query.kpi_preview import draft_definitions, draft_of, preview_kpis, segments_asked
    from query.kpis_api import parse_window

    map_doc, segment_doc = draft_of({"map": map_doc, **({"segment": segment_doc} if segment_doc is not None else {})})
    defs = await draft_definitions(conn, project_id, map_doc, segment_doc)
    segments = segments_asked(params.get("segment"), defs)
    first, last, now, _ = parse_window(params)  # what the endpoint would answer for the same parameters
    try:
        ch = await ClickHouse.connect(settings.effective_clickhouse_url)
    except ClickHouseError as exc:
        if "in use by another process" in str(exc):
            return None
        raise
    try:
        return await preview_kpis(
            ch, conn, settings.clickhouse_cluster, project_id, defs, segments, first, last, now, locks=conn
        )
    finally:
        await ch.close()


def _via_service(settings: Settings, body: dict[str, Any], params: dict[str, str], secret: str) -> dict[str, Any]:
    from journeys.http import ApiError, ServiceRefused, post_to_service

    host = "127.0.0.1" if settings.query_host in ("0.0.0.0", "::") else settings.query_host
    try:
        return post_to_service(
            f"http://{host}:{settings.query_port}/v1/kpis/preview?{urllib.parse.urlencode(params)}", body, secret
        )
    except ServiceRefused as exc:
        raise ApiError(exc.status, exc.errors) from None


def _rate(value: Any) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def render(result: Mapping[str, Any]) -> str:
    """Per segment, per stage: the counts, the rate against its target, and the bottleneck."""
    lines = [
        f"preview of map {result['map']['name']} ({result['window']['from']} to {result['window']['to']}): nothing published"
    ]
    for segment in result["segments"]:
        lines.append(f"\nsegment {segment['segment'] or 'all customers'}")
        lines.append(
            f"  {'stage':<20} {'reached':>8} {'entered':>8} {'converted':>9} {'dropped':>8} {'in prog.':>8} {'conv. rate':>10}  status"
        )
        for stage in segment["stages"]:
            converted, dropped, in_progress = (
                "-" if stage[k] is None else stage[k] for k in ("converted", "dropped", "in_progress")
            )
            lines.append(
                f"  {stage['name'][:20]:<20} {stage['reached']:>8} {stage['entered']:>8} {converted:>9} {dropped:>8} "
                f"{in_progress:>8} {_rate(stage['conversion_rate']):>10}  {stage['status'] or ''}"
            )
        bottleneck = segment.get("bottleneck")
        if bottleneck:
            lines.append(
                f"  bottleneck: {bottleneck['stage']} ({bottleneck['metric']} {bottleneck['actual']} against {bottleneck['target']})"
            )
    return "\n".join(lines)
