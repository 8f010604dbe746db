#!/usr/bin/env python3
"""Stitching benchmark (issue 18): how long a burst of identity links holds events back.

A real collector (``collector.app.create_app``, aiohttp on 127.0.0.1, default 250 ms linger) on the
embedded stores, in a fresh temporary data dir. Per round, ``--events`` events for ``--customers`` visitors
are posted in 100-event batches as fast as the collector answers; in the linked round, ``--links`` of the
visitors identify (an event with both their anonymous id and a user id: one identity link each, each one
moving an id). Measured: from the last batch's 200 until every event is readable in ``events`` and (linked
round) every link is in ``identities``. The baseline is the same events without links, in the same run.

    python bench/stitching.py                      # 19.5 k events, 2 300 links (the issue's burst)
    python bench/stitching.py --links 10000 --events 40000 --customers 12000

Prints the figures; ``--json FILE`` writes them. Exit 0 when the linked round's delay is within
``--target-ms`` (default 500 ms) of the baseline's, 1 otherwise, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def batches(run: str, events: int, customers: int, links: int) -> list[list[dict[str, Any]]]:
    """Each visitor browses anonymously; the first ``links`` of them identify once, half-way through."""
    out: list[dict[str, Any]] = []
    for i in range(events):
        visitor = i % customers
        event: dict[str, Any] = {
            "type": "track",
            "event": "Viewed",
            "anonymousId": f"{run}-a{visitor}",
            "messageId": f"{run}-{i}",
            "channel": "web",
        }
        if visitor < links and i // customers == 0:
            event["userId"] = f"{run}-u{visitor}"  # the identify: both ids, one link
        out.append(event)
    return [out[i : i + 100] for i in range(0, len(out), 100)]


async def count(ch: Any, table: str, project_id: str) -> int:
    column = "message_id" if table == "events" else "distinct_id"
    _, rows = await ch.query(
        f"SELECT uniqExact({column}) FROM {table} WHERE project_id = {{p:String}}", {"p": project_id}
    )
    return int(rows[0][0])


async def round_trip(
    http: aiohttp.ClientSession,
    url: str,
    key: str,
    ch: Any,
    project_id: str,
    sent: list[list[dict[str, Any]]],
    links: int,
) -> dict[str, float]:
    auth = {
        "Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode(),
        "Content-Type": "application/json",
    }
    began = time.perf_counter()
    for batch in sent:
        async with http.post(url + "/v1/batch", data=orjson.dumps({"batch": batch}), headers=auth) as resp:
            assert resp.status == 200, await resp.text()
    acked = time.perf_counter()
    total = sum(len(b) for b in sent)
    while await count(ch, "events", project_id) < total or (
        links and await count(ch, "identities", project_id) < links
    ):
        await asyncio.sleep(0.01)
    visible = time.perf_counter()
    return {"send_s": acked - began, "visible_after_last_ack_ms": (visible - acked) * 1000}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    for name in list(os.environ):
        if name.startswith("JOURNEYS_") or name in ("CLICKHOUSE_URL", "DATABASE_URL"):
            del os.environ[name]
    from collector.app import create_app as create_collector
    from journeys.config import load_settings
    from journeys.keys import create_project
    from journeys.metrics import Metrics
    from journeys.stores import open_stores

    report: dict[str, Any] = {"events": args.events, "customers": args.customers, "links": args.links}
    with tempfile.TemporaryDirectory(prefix="journeys-stitching-") as data:
        settings = load_settings(data_dir=Path(data))
        async with open_stores(settings) as stores:
            runner = web.AppRunner(create_collector(stores, Metrics()), access_log=None, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            try:
                async with aiohttp.ClientSession() as http:
                    for name, links in (("baseline (no links)", 0), ("linked", args.links)):
                        async with stores.pg.acquire() as conn:
                            project = await create_project(conn, f"bench-stitching-{uuid.uuid4().hex[:8]}")
                        sent = batches(uuid.uuid4().hex[:6], args.events, args.customers, links)
                        figures = await round_trip(
                            http, url, project.write_key, stores.clickhouse, project.id, sent, links
                        )
                        report[name] = figures
                        log(
                            f"{name:22} {args.events:,} events, {links:,} links: sent in {figures['send_s']:.2f} s, "
                            f"all visible {figures['visible_after_last_ack_ms']:.0f} ms after the last 200"
                        )
            finally:
                await runner.cleanup()
    extra = report["linked"]["visible_after_last_ack_ms"] - report["baseline (no links)"]["visible_after_last_ack_ms"]
    report["links_delay_ms"] = extra
    log(f"the links' delay: {extra:.0f} ms over the baseline (target ≤ {args.target_ms:.0f} ms)")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=19_500)
    parser.add_argument("--customers", type=int, default=3_900)
    parser.add_argument("--links", type=int, default=2_300)
    parser.add_argument("--target-ms", type=float, default=500.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    try:
        report = asyncio.run(run(args))
    except Exception as exc:  # noqa: BLE001 - a benchmark that could not run says why
        log(f"could not run: {exc!r}")
        return 2
    if args.json:
        args.json.write_text(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    print(orjson.dumps(report).decode())
    return 0 if report["links_delay_ms"] <= args.target_ms else 1


if __name__ == "__main__":
    sys.exit(main())
