#!/usr/bin/env python3
"""What one poll of the stage-state updater costs, step by step, on an idle machine: the live path alone.

``live.py`` measures the whole service under load, where every figure moves with the machine's other work;
this isolates the statements a poll runs, to compare two versions of them minutes apart (run it in a worktree
of each). What it does, on the embedded default (chDB + embedded PostgreSQL, a fresh temporary data dir):

1. A project with the five-stage template map and the four segments of ``benchlib.SEGMENTS`` (as
   ``bench/query.py``); ``--events`` events over ``--customers`` customers generated as ``bench/query.py`` does
   (stitched and anonymous ones included), inserted straight into ClickHouse; every customer's facts built
   (``StateWriter.build_all``).
2. For each size N of ``--sizes``, ``--reps`` times: one new touchpoint event (now) for each of N users
   ``u<k>`` drawn at random (~15 % of them anonymous customers' numbers: a new customer, as on a live site),
   inserted in one insert; then ``StateWriter.append`` of those N ids, the updater's live
   path (resolve customers, merge the new rows onto the stored inputs, write the facts difference), timed in
   all and per step (the steps of ``journeys_stage_state_step_seconds``).
3. Prints per size the wall-clock ms of each repetition and the steps of the fastest; with ``--check``, that
   the facts equal a rebuild's afterwards (0 fact keys differ).

    . .venv/bin/activate && python bench/facts_poll.py                  # 300 k customers, 500 / 5 000 / 20 000
    python bench/facts_poll.py --sizes 5000 --reps 5 --check
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from benchlib import five_stage_project, log  # noqa: E402 - the sibling, after the path


def _bench_query() -> Any:
    """bench/query.py (its generator and touchpoints), loaded by path: its name is the query package's."""
    spec = importlib.util.spec_from_file_location("bench_query", HERE / "query.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_query"] = module
    spec.loader.exec_module(module)
    return module


async def run(args: argparse.Namespace) -> int:
    for name in list(os.environ):  # the default embedded configuration, whatever the caller's shell says
        if name.startswith("JOURNEYS_") or name in ("CLICKHOUSE_URL", "DATABASE_URL"):
            del os.environ[name]
    from journeys.config import load_settings
    from journeys.events import EVENT_COLUMNS
    from journeys.stores import open_stores
    from query.facts.builds import current_definitions
    from query.facts.writer import StateWriter

    generated = _bench_query()
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="facts-poll-")
    async with open_stores(load_settings(data_dir=data_dir)) as stores:
        ch = stores.clickhouse
        project, _ = await five_stage_project(stores, "bench-facts-poll")
        began = time.perf_counter()
        for lines, id_lines, rev_lines, _ in generated.generate(
            project.id, args.events, args.customers, args.seed, int(time.time() * 1000)
        ):
            if rev_lines:  # the reverse index first, as IdentityGraph writes them
                columns = ("project_id", "customer_id", "distinct_id", "version", "is_deleted")
                await ch.insert_lines("identities_by_customer", columns, b"".join(rev_lines))
                columns = ("project_id", "distinct_id", "customer_id", "version", "is_deleted")
                await ch.insert_lines("identities", columns, b"".join(id_lines))
            await ch.insert_lines("events", EVENT_COLUMNS, b"".join(lines))
        log(f"{args.events:,} events for {args.customers:,} customers inserted in {time.perf_counter() - began:.1f} s")
        definitions = await current_definitions(stores.pg, project.id)
        writer = StateWriter(ch, stores.pg)
        steps: dict[str, float] = {}
        writer.on_step = lambda step, seconds: steps.__setitem__(step, steps.get(step, 0.0) + seconds)
        began = time.perf_counter()
        await writer.build_all(project.id, definitions, 1)
        log(f"every customer's facts built in {time.perf_counter() - began:.1f} s")

        rng = random.Random(args.seed + 1)
        sent = 0
        for size in args.sizes:
            timings: list[tuple[float, dict[str, float]]] = []
            for _ in range(args.reps):
                _, now = await ch.query("SELECT toUnixTimestamp64Milli(now64(3))")
                since_ms = int(now[0][0]) - 1
                lines, touched = [], set()
                for k in rng.sample(range(args.customers), size):
                    sent += 1
                    kind, name, channels, properties = rng.choice(generated._TOUCHES[rng.randrange(5)])
                    at = time.time()
                    user = f"u{k:07d}"
                    row = [project.id, f"poll-{sent}", kind, name, rng.choice(channels),
                           "page_view" if kind == "page" else name, "", user, user, "", "", "", at, at, None, at,
                           properties(rng), {}, {}]  # fmt: skip
                    lines.append(orjson.dumps(row) + b"\n")
                    touched.add(user)
                await ch.insert_lines("events", EVENT_COLUMNS, b"".join(lines))
                steps.clear()
                began = time.perf_counter()
                await writer.append(project.id, definitions, 1, touched, since_ms)
                timings.append((time.perf_counter() - began, dict(steps)))
            fastest = min(timings, key=lambda t: t[0])
            print(
                f"N={size:,}: ms "
                + ", ".join(f"{t[0] * 1000:.0f}" for t in timings)
                + " | steps of the fastest: "
                + ", ".join(f"{step} {seconds * 1000:.0f}" for step, seconds in fastest[1].items()),
                flush=True,
            )
        if args.check:
            await writer.build_all(project.id, definitions, 2)
            _, rows = await ch.query(
                "SELECT count() FROM (SELECT customer_id, segments, map_name, fact, stage, at, converted, wait_ms, "
                "touchpoint, channel, from_stage, move_kind, repeat, sentiment, sumIf(n, build = 1) AS polled, "
                "sumIf(n, build = 2) AS rebuilt FROM stage_facts WHERE project_id = {p:String} GROUP BY ALL "
                "HAVING polled != rebuilt)",
                {"p": project.id},
            )
            print(f"fact keys that differ from a rebuild: {rows[0][0]}")
            return 0 if rows[0][0] == 0 else 1
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=300_000)
    parser.add_argument("--events", type=int, default=900_000)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[500, 5000, 20000])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--check", action="store_true", help="compare the facts with a rebuild's at the end")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
