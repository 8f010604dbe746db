"""KPI freshness that tells the truth (issue 18.5): answers say up to which acknowledgement they count
(``includes.acknowledged_before``), ``journeys_kpi_freshness_seconds`` is now minus that, and both hold back
whenever what was acknowledged is not counted yet — events held in the collector (the issue's case: the
old lag metric said 0.3 s while KPIs were 15–23 s behind) or an updater held back — and catch up after.

Every answer is also checked for what the field promises: an event acknowledged (its 200 received) before
``acknowledged_before`` is counted in that same answer.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from query import definitions
from journeys.keys import create_project
from support import basic, wait_drained, wait_until

BASE = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=5)
MAP = {
    "name": "funnel",
    "stages": [{"id": "aware", "name": "Aware", "conversion_window_days": 2}, {"id": "buy", "name": "Buy"}],
    "touchpoints": [
        {"id": "ad", "stage": "aware", "match": {"event": "A"}},
        {"id": "buy", "stage": "buy", "match": {"event": "C"}},
    ],
}
_names = itertools.count()


async def _project(stores):  # type: ignore[no-untyped-def]
    async with stores.pg.acquire() as conn:
        project = await create_project(conn, f"fresh-{os.getpid()}-{next(_names)}")
        await definitions.apply(conn, project.id, "map", MAP)
    return project


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Reader:
    """Reads KPIs and the query service's /metrics; checks every answer against the acknowledgements."""

    def __init__(self, http, query, project) -> None:  # type: ignore[no-untyped-def]
        self.http, self.query, self.project = http, query, project
        self.acknowledged: list[tuple[float, int]] = []  # (when its 200 came back, reached once counted)

    async def send(self, collector, user: str) -> float:  # type: ignore[no-untyped-def]
        at = (BASE + timedelta(hours=1)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        event = {"type": "track", "userId": user, "event": "A", "channel": "web", "timestamp": at}
        async with self.http.post(
            collector.make_url("/v1/batch"), json={"batch": [event]}, headers=basic(self.project.write_key)
        ) as r:
            assert r.status == 200, await r.text()
        acked = time.time()  # the collector acknowledged it before this
        self.acknowledged.append((acked, len(self.acknowledged) + 1))
        return acked

    async def answer(self) -> tuple[float | None, int]:
        """(includes.acknowledged_before in s, reached), from /v1/kpis (``None`` before the map's first
        computation and the updater's first poll); the response header says the same."""
        params = {"map": "funnel", "from": BASE.date().isoformat()}
        async with self.http.get(
            self.query.make_url("/v1/kpis"), params=params, headers=basic(self.project.read_key)
        ) as r:
            if r.status == 503:  # the map's first computation
                return None, 0
            assert r.status == 200, await r.text()
            body = await r.json()
            header = r.headers.get("X-Journeys-Acknowledged-Before")
        assert list(body)[list(body).index("rebuilding") + 1] == "includes"
        before = body["includes"]["acknowledged_before"]
        assert before == header
        reached = body["segments"][0]["stages"][0]["reached"]
        if before is None:  # the updater's first poll is not done
            return None, reached
        assert before.endswith("Z")
        position = _seconds(before)
        for acked, counted in self.acknowledged:  # what the field promises, in this very answer
            if acked <= position:
                assert reached >= counted, (before, acked, reached)
        return position, reached

    async def daily_header(self) -> float:
        params = {"map": "funnel", "from": BASE.date().isoformat(), "format": "csv"}
        async with self.http.get(
            self.query.make_url("/v1/kpis/daily"), params=params, headers=basic(self.project.read_key)
        ) as r:
            assert r.status == 200 and r.content_type == "text/csv"
            return _seconds(r.headers["X-Journeys-Acknowledged-Before"])

    async def freshness(self) -> float:
        async with self.http.get(self.query.make_url("/metrics")) as r:
            text = await r.text()
        [value] = re.findall(r"^journeys_kpi_freshness_seconds (\S+)$", text, re.M)
        return float(value)

    async def step_counts(self) -> dict[str, float]:
        """How many times the updater timed each step (journeys_stage_state_step_seconds)."""
        async with self.http.get(self.query.make_url("/metrics")) as r:
            text = await r.text()
        found = re.findall(r'^journeys_stage_state_step_seconds_count\{step="(\w+)"\} (\S+)$', text, re.M)
        return {step: float(count) for step, count in found}

    async def fallen_below(self, seconds: float) -> bool:
        return await self.freshness() < seconds

    async def counted(self, acked: float, reached: int) -> bool:
        position, now_reached = await self.answer()
        return position is not None and position >= acked and now_reached == reached


async def _held(reader: Reader, acked: float, reached: int) -> float:
    """While held: answers keep counting what they did and never claim the held event, and the freshness
    gauge is at least as old as the held acknowledgement — so it rises for as long as it is held. Returns
    the last freshness seen (over a second)."""
    for _ in range(3):
        position, now_reached = await reader.answer()
        assert position is not None and position < acked and now_reached == reached
        before_scrape = time.time()
        fresh = await reader.freshness()
        assert fresh >= before_scrape - acked, (fresh, before_scrape - acked)
        await asyncio.sleep(0.6)
    assert fresh > 1.0
    return fresh


@pytest.mark.slow
async def test_freshness_holds_back_while_the_updater_is_held_and_catches_up(http, collector, query, stores) -> None:  # type: ignore[no-untyped-def]
    """Holding the updater's facts lock in PostgreSQL (as a long write of it would) keeps an acknowledged and
    inserted event out of the KPIs: the position and the gauge say so; released, both catch up."""
    from query.facts.locks import _FACTS_LOCK

    project = await _project(stores)
    reader = Reader(http, query, project)
    first = await reader.send(collector, "u1")
    await wait_until(lambda: reader.counted(first, 1), timeout=60)
    assert await reader.daily_header() >= first

    async with stores.pg.acquire() as conn:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _FACTS_LOCK, project.id)
            second = await reader.send(collector, "u2")
            await wait_drained(collector)  # in ClickHouse: only the updater holds it back
            highest = await _held(reader, second, 1)
            assert await reader.daily_header() < second
    await wait_until(lambda: reader.counted(second, 2), timeout=60)
    await wait_until(lambda: reader.fallen_below(highest), timeout=30)  # the next polls start after the hold


async def test_freshness_holds_back_while_the_collector_holds_acknowledged_events(  # type: ignore[no-untyped-def]
    http, collector, query, stores
) -> None:
    """The issue's case: the collector acknowledged an event but has not got it into ClickHouse (here its
    insert waits at a gate; a backlog in the spool, stitching or an outage do the same). The updater is
    caught up with ClickHouse, yet the answers must not claim the event, and the gauge rises."""
    from collector.appkeys import INSERTER

    project = await _project(stores)
    reader = Reader(http, query, project)
    first = await reader.send(collector, "u1")
    await wait_until(lambda: reader.counted(first, 1), timeout=60)
    steps = await reader.step_counts()

    inserter = collector.app[INSERTER]
    real, gate, waiting = inserter.clickhouse, asyncio.Event(), asyncio.Event()

    class Gated:
        """The real ClickHouse facade; this project's inserts wait at the gate."""

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        async def insert_lines(self, table: str, columns: Any, data: bytes) -> None:
            if project.id.encode() in data:
                waiting.set()
                await gate.wait()
            await real.insert_lines(table, columns, data)

    inserter.clickhouse = Gated()
    try:
        second = await reader.send(collector, "u2")
        await asyncio.wait_for(waiting.wait(), 10)
        highest = await _held(reader, second, 1)
    finally:
        gate.set()
        inserter.clickhouse = real
    await wait_until(lambda: reader.counted(second, 2), timeout=60)
    await wait_until(lambda: reader.fallen_below(highest), timeout=30)
    # The poll that counted u2 merged it onto the serving build, timing each step (the Grafana panel "Stage
    # facts: time per step").
    timed = await reader.step_counts()
    steps_taken = {step for step, count in timed.items() if count > steps.get(step, 0)}
    assert steps_taken >= {"changes", "compare", "customers", "merge", "difference"}, (steps, timed)
