"""No refresh of the stage facts can miss a change that becomes visible after it ran (issue 18.3).

Both interleavings are forced with real chDB, no mock of our storage:

* the traits' materialized view, made to sleep on one project's rows, commits the late identify's trait row
  in ``customer_traits`` seconds after the ``events`` part of the same insert is visible (without the sleep:
  15–90 ms after);
* a real ``INSERT … SELECT`` that sleeps is stamped (``inserted_at``) when it begins and becomes visible
  when it ends, after a row stamped later (another collector's insert, a long one) was handled.

Each test checks that the interleaving really happened (the updater completed a poll in between) and then
that the KPIs count the change. Before the fix both stayed wrong until a rebuild.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import re
import time
from datetime import datetime, timedelta, timezone
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from collector.app import create_app as create_collector
from query import definitions
from journeys.clickhouse import ClickHouse
from journeys.metrics import Metrics
from journeys.keys import create_project
from query.reads import facts_of
from segment_facts import segment_facts
from query.maps import validate_segment
from support import basic, wait_drained, wait_until

BASE = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=10)
MAP = {
    "name": "funnel",
    "stages": [
        {"id": "aware", "name": "Aware", "conversion_window_days": 2},
        {"id": "consider", "name": "Consider", "conversion_window_days": 5},
        {"id": "buy", "name": "Buy"},
    ],
    "touchpoints": [
        {"id": "ad", "stage": "aware", "match": {"event": "A"}},
        {"id": "look", "stage": "consider", "match": {"event": "B"}},
        {"id": "buy", "stage": "buy", "match": {"event": "C"}},
    ],
}
# The case: a country from a late, older identify; the plan from a newer one.
DE_VIP = {
    "name": "de-vip",
    "rules": [
        {"field": "traits.country", "op": "equals", "value": "de"},
        {"field": "traits.plan", "op": "equals", "value": "vip"},
    ],
}
WEB_FIRST = {"name": "web-first", "rules": [{"field": "first_channel", "op": "equals", "value": "web"}]}
_names = itertools.count()


def _at(hours: float) -> str:
    return (BASE + timedelta(hours=hours)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _project(stores):  # type: ignore[no-untyped-def]
    async with stores.pg.acquire() as conn:
        project = await create_project(conn, f"missed-{os.getpid()}-{next(_names)}")
        await definitions.apply(conn, project.id, "map", MAP)
        for segment in (DE_VIP, WEB_FIRST):
            await definitions.apply(conn, project.id, "segment", segment)
    return project


async def _send(http, collector, key: str, events: list[dict[str, Any]]) -> None:  # type: ignore[no-untyped-def]
    async with http.post(collector.make_url("/v1/batch"), json={"batch": events}, headers=basic(key)) as r:
        assert r.status == 200, await r.text()


async def _reached(http, query, key: str, segment: str | None = None) -> list[int]:  # type: ignore[no-untyped-def]
    params = {"map": "funnel", "from": BASE.date().isoformat()}
    if segment:
        params["segment"] = segment

    async def ready() -> dict[str, Any] | None:
        async with http.get(query.make_url("/v1/kpis"), params=params, headers=basic(key)) as r:
            if r.status == 503:
                return None
            assert r.status == 200, await r.text()
            body = await r.json()
            return None if body["rebuilding"] else body

    body = await wait_until(ready, timeout=30)
    return [s["reached"] for s in body["segments"][0]["stages"]]


async def _full_poll(query) -> None:  # type: ignore[no-untyped-def]
    """Wait until the updater has completed a poll that began after now."""
    from query.appkeys import STATE_UPDATER

    updater, mark = query.app[STATE_UPDATER], time.monotonic()

    async def done() -> bool:
        return updater.caught_up_from is not None and updater.caught_up_from > mark

    await wait_until(done, timeout=30)


async def _count(stores, table: str, project_id: str, where: str = "1") -> int:  # type: ignore[no-untyped-def]
    _, rows = await stores.clickhouse.query(
        f"SELECT count() FROM {table} WHERE project_id = {{p:String}} AND {where}", {"p": project_id}
    )
    return rows[0][0]


@pytest.fixture
async def own_collector(collector_stores) -> AsyncIterator[TestServer]:  # type: ignore[no-untyped-def]
    """A collector with a ClickHouse connection of its own, as in production (its own process): its inserts
    do not queue on the query service's writer thread, so a held insert holds back only itself."""
    ch = await ClickHouse.connect(collector_stores.clickhouse.url)
    server = TestServer(
        create_collector(dataclasses.replace(collector_stores, clickhouse=ch), Metrics()), host="127.0.0.1"
    )
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()
        await ch.close()


class SlowTraitsView:
    """The real ``customer_traits_mv``, made to sleep on one project's rows (ALTER … MODIFY QUERY, put back
    on exit): the ``events`` part of that project's inserts is committed and visible while their trait rows
    are seconds away. Without it the same happens for 15–90 ms per insert (tests/segment_facts.py)."""

    def __init__(self, stores, project_id: str, seconds: float = 3.0):  # type: ignore[no-untyped-def]
        self.ch = stores.clickhouse
        self.project_id = project_id
        self.seconds = seconds
        self.original: str | None = None

    async def __aenter__(self) -> "SlowTraitsView":
        _, rows = await self.ch.query(
            "SELECT as_select FROM system.tables WHERE database = currentDatabase() AND name = 'customer_traits_mv'"
        )
        self.original = rows[0][0]
        assert self.original.rstrip().endswith("WHERE type = 'identify'"), self.original
        assert re.fullmatch(r"[\w-]+", self.project_id), self.project_id  # a literal in the DDL below
        await self.ch.command(
            f"ALTER TABLE customer_traits_mv MODIFY QUERY {self.original} "
            f"AND if(project_id = '{self.project_id}', sleepEachRow({self.seconds}), 0) = 0"
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ch.command(f"ALTER TABLE customer_traits_mv MODIFY QUERY {self.original}")


@pytest.mark.slow
async def test_a_late_identify_whose_trait_rows_commit_after_its_event_is_counted(  # type: ignore[no-untyped-def]
    http, own_collector, query, stores
) -> None:
    """The issue's case: the customer's only change is a late, older identify carrying the trait that makes
    them a segment member. A refresh runs while the identify's event is visible and its trait row is not
    yet; the segment must count the customer all the same, and go on counting them."""
    project = await _project(stores)
    await _send(
        http,
        own_collector,
        project.write_key,
        [
            {"type": "track", "userId": "late-vip", "event": "A", "channel": "web", "timestamp": _at(1)},
            {"type": "identify", "userId": "late-vip", "traits": {"plan": "vip"}, "timestamp": _at(3)},
        ],
    )
    await wait_drained(own_collector)
    await _full_poll(query)
    assert await _reached(http, query, project.read_key) == [1, 0, 0]
    assert await _reached(http, query, project.read_key, "de-vip") == [0, 0, 0]

    async with SlowTraitsView(stores, project.id):
        late = {
            "type": "identify",
            "userId": "late-vip",
            "traits": {"country": "de"},
            "timestamp": _at(2),
            "messageId": f"{project.id}-late-identify",
        }
        await _send(http, own_collector, project.write_key, [late])
        mine = f"message_id = '{late['messageId']}'"

        async def event_visible() -> bool:
            return await _count(stores, "events", project.id, mine) == 1

        await wait_until(event_visible, timeout=10)
        await _full_poll(query)  # a whole poll (and its refresh of late-vip) ran while ...
        trait = "distinct_id = 'late-vip' AND trait = 'country'"
        assert await _count(stores, "customer_traits", project.id, trait) == 0, "interleaving not forced"
        await wait_drained(own_collector)  # ... the trait row was not visible; now it is
        assert await _count(stores, "customer_traits", project.id, trait) == 1

    await _full_poll(query)
    await _full_poll(query)
    assert await _reached(http, query, project.read_key, "de-vip") == [1, 0, 0]
    assert await _reached(http, query, project.read_key) == [1, 0, 0]  # counted once, not twice


@pytest.mark.slow
async def test_a_row_stamped_earlier_but_visible_later_than_a_handled_one_is_counted(  # type: ignore[no-untyped-def]
    http, collector, query, stores
) -> None:
    """An insert that takes long (or another collector's, at the same time) is stamped when it begins and
    visible when it ends: here after a newer event of the same customer was polled and handled. Its event
    must be counted all the same."""
    project = await _project(stores)
    await _send(
        http,
        collector,
        project.write_key,
        [
            {"type": "track", "userId": "slow", "event": "A", "channel": "web", "timestamp": _at(1)},
        ],
    )
    await wait_drained(collector)
    await _full_poll(query)
    assert await _reached(http, query, project.read_key) == [1, 0, 0]

    message = f"{project.id}-long-insert"
    long_insert = asyncio.create_task(
        stores.clickhouse.command(
            "INSERT INTO events (project_id, message_id, type, event, channel, distinct_id, user_id, timestamp, "
            "original_timestamp, received_at, properties, traits, context) "
            "SELECT {p:String}, {m:String}, 'track', 'B', 'web', 'slow', 'slow', {t:DateTime64(3, 'UTC')}, "
            "{t:DateTime64(3, 'UTC')}, now64(3), '{}', '{}', '{}' FROM numbers(1) WHERE sleepEachRow(3) = 0",
            {"p": project.id, "m": message, "t": BASE + timedelta(hours=2)},
        )
    )
    try:
        await asyncio.sleep(0.3)  # the long insert has begun (and stamped its row)
        await _send(
            http,
            collector,
            project.write_key,
            [
                {"type": "page", "userId": "slow", "name": "Home", "channel": "web", "timestamp": _at(4)},
            ],
        )
        await wait_drained(collector)
        await _full_poll(query)  # the page view's row, stamped later, was polled and its customer refreshed
        assert (
            not long_insert.done() and await _count(stores, "events", project.id, f"message_id = '{message}'") == 0
        ), "interleaving not forced"
    finally:
        await long_insert
    _, rows = await stores.clickhouse.query(
        "SELECT anyIf(inserted_at, message_id = {m:String}) < anyIf(inserted_at, type = 'page') "
        "FROM events WHERE project_id = {p:String}",
        {"p": project.id, "m": message},
    )
    assert rows[0][0] == 1  # visible now, and stamped before the page view that was handled
    await _full_poll(query)
    await _full_poll(query)
    assert await _reached(http, query, project.read_key) == [1, 1, 0]


async def test_segment_facts_off_events_equal_the_profiles(http, collector, query, stores) -> None:  # type: ignore[no-untyped-def]
    """The refresh reads traits and first touch off `events`; once the views have caught up they are what
    GET /v1/customers/{id} reads off the views' tables, for stitched customers with several ids, late and
    older identifies, and first touches from another id."""
    project = await _project(stores)
    await _send(
        http,
        collector,
        project.write_key,
        [
            {
                "type": "page",
                "anonymousId": "anon-1",
                "name": "Home",
                "channel": "social",
                "timestamp": _at(1),
                "context": {"campaign": {"source": "fb", "medium": "cpc", "name": "spring"}},
            },
            {
                "type": "identify",
                "anonymousId": "anon-1",
                "userId": "u-1",
                "traits": {"plan": "vip", "country": "fr"},
                "timestamp": _at(5),
            },
            {
                "type": "identify",
                "userId": "u-1",
                "traits": {"country": "de", "n": [1, {"a": None}]},
                "timestamp": _at(6),
            },
            {"type": "identify", "userId": "u-1", "traits": {"plan": "basic"}, "timestamp": _at(2)},  # older: loses
            {"type": "track", "userId": "u-1", "event": "A", "channel": "email", "timestamp": _at(3)},
            {"type": "track", "userId": "u-2", "event": "A", "channel": "web", "timestamp": _at(2)},
            {"type": "identify", "userId": "u-2", "traits": {"plan": "vip"}, "timestamp": _at(2.5)},
            {"type": "alias", "previousId": "u-3", "userId": "u-2", "timestamp": _at(7)},
            {"type": "track", "userId": "u-3", "event": "B", "channel": "store", "timestamp": _at(0.5)},
            {"type": "identify", "userId": "u-3", "traits": {"country": "de"}, "timestamp": _at(8)},
        ],
    )
    await wait_drained(collector)
    members = {"u-1": ["anon-1", "u-1"], "u-2": ["u-2", "u-3"], "nobody": ["nobody"]}
    segments = [
        validate_segment(DE_VIP),
        validate_segment(WEB_FIRST),
        validate_segment({"name": "n", "rules": [{"field": "traits.n", "op": "exists"}]}),
    ]
    ours = await segment_facts(stores.clickhouse, project.id, members, segments)
    theirs = await facts_of(stores.clickhouse, project.id, members)
    for customer in members:
        assert ours[customer]["first_touch"] == theirs[customer]["first_touch"], customer
        wanted = {k: v for k, v in theirs[customer]["traits"].items() if k in ("country", "plan", "n")}
        assert ours[customer]["traits"] == wanted, customer
    assert ours["u-1"]["traits"] == {"country": "de", "plan": "vip", "n": [1, {"a": None}]}
    assert ours["u-1"]["first_touch"]["first_utm_source"] == "fb"
    assert ours["u-2"]["first_touch"]["first_channel"] == "store" and ours["nobody"]["first_touch"] is None
    # Only what the rules name is read: no segment, no read.
    assert await segment_facts(stores.clickhouse, project.id, members, []) == {
        c: {"traits": {}, "first_touch": None} for c in members
    }
