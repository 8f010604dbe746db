"""The stage facts ClickHouse computes (query/facts/compute.py) equal the Python fold of the definitions
(tests/facts_oracle.py), row for row, on generated data that reaches every corner the definitions name:
two maps, rules on nested and dotted properties, sentiment from the rule, from a property (numbers, text,
booleans, missing) or from the event; retried copies with other times and receipts, equal times broken by
receipt then message id; ids stitched, re-pointed and deleted; segments over traits of every JSON type and
over the first touch (channel, campaign, first day).

Rows go straight into ``events`` and ``identities`` (as the collector writes them), so the generator controls
every receipt time and copy.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from facts_oracle import current_facts, keys_of, python_facts
from journeys import identities
from journeys.events import EVENT_COLUMNS
from query.maps import validate_map, validate_segment
from query.facts.compute import COPY_INPUTS_SQL, EMPTY_INPUTS_SQL, FactsSql
from query.facts.model import FACT_COLUMNS, Definitions
from query.facts.writer import StateWriter

MAPS = [
    {
        "name": "funnel",
        "stages": [
            {"id": "aware", "name": "Aware", "conversion_window_days": 0.01},
            {"id": "consider", "name": "Consider", "conversion_window_days": 0.05},
            {"id": "buy", "name": "Buy", "conversion_window_days": 1},
            {"id": "loyal", "name": "Loyal"},
        ],
        "touchpoints": [
            {"id": "ad", "stage": "aware", "match": {"event": "A"}},
            {
                "id": "rated",
                "stage": "consider",
                "match": {"event": "B"},
                "sentiment": {"property": "review.score", "positive_at_least": 4, "negative_at_most": 2},
            },
            {
                "id": "buy-web",
                "stage": "buy",
                "match": {
                    "event": "C",
                    "channel": ["web", "store"],
                    "where": [{"property": "order.total", "op": ">", "value": 0}],
                },
            },
            {"id": "buy-other", "stage": "buy", "match": {"event": "C"}, "sentiment": "positive"},
            {"id": "loyal", "stage": "loyal", "match": {"event": ["D", "E"]}, "sentiment": "negative"},
            {"id": "page", "stage": "aware", "match": {"type": "page"}},
        ],
    },
    {
        "name": "service",
        "stages": [
            {"id": "contact", "name": "Contact", "conversion_window_days": 0.02},
            {"id": "solved", "name": "Solved", "after": "contact"},
            {"id": "advocate", "name": "Advocate"},
        ],
        "touchpoints": [
            {"id": "call", "stage": "contact", "match": {"channel": "phone"}},
            {
                "id": "fixed",
                "stage": "solved",
                "match": {"event": "E"},
                "sentiment": {"property": "score", "positive_at_least": 4.5, "negative_at_most": 1},
            },
            {
                "id": "praise",
                "stage": "advocate",
                "match": {"event": "D", "where": [{"property": "score", "op": "exists"}]},
            },
        ],
    },
    {"name": "draft", "stages": [{"id": "only", "name": "Only"}], "touchpoints": []},  # stages, no rules yet
]
SEGMENTS = [
    {"name": "vip", "rules": [{"field": "traits.plan", "op": "equals", "value": "vip"}]},
    {"name": "big", "rules": [{"field": "traits.seats", "op": ">=", "value": 10}]},
    {"name": "not-basic", "rules": [{"field": "traits.plan", "op": "not_in", "value": ["basic", 3]}]},
    {
        "name": "tagged",
        "match": "any",
        "rules": [
            {"field": "traits.tags", "op": "contains", "value": "x"},
            {"field": "traits.flag", "op": "equals", "value": True},
        ],
    },
    {"name": "no-plan", "rules": [{"field": "traits.plan", "op": "not_exists"}]},
    {
        "name": "web-first",
        "rules": [
            {"field": "first_channel", "op": "equals", "value": "web"},
            {"field": "first_utm_source", "op": "not_equals", "value": "spam"},
        ],
    },
    {"name": "campaign", "rules": [{"field": "first_utm_campaign", "op": "contains", "value": "sum"}]},
    {"name": "early", "rules": [{"field": "first_seen", "op": "<=", "value": "2026-03-02"}]},
]
BASE = datetime(2026, 3, 1, 23, 0, tzinfo=timezone.utc)

trait_value = st.one_of(
    st.sampled_from(["vip", "basic", "pro", "", "summer-x"]),
    st.integers(-2, 20),
    st.sampled_from([3, 10.0, 9.5]),
    st.booleans(),
    st.none(),
    st.lists(st.sampled_from(["x", "y", 1]), max_size=3),
)
event_st = st.fixed_dictionaries(
    {
        "id": st.integers(0, 2),
        "kind": st.sampled_from(["A", "B", "C", "C", "D", "E", "X", "page", "identify", "identify"]),
        "channel": st.sampled_from(["web", "store", "email", "phone"]),
        "minute": st.integers(0, 12),  # few distinct minutes: equal times are common
        "received": st.integers(0, 3),  # ... and equal receipts
        "score": st.one_of(st.none(), st.integers(0, 5), st.just(4.5), st.just("5"), st.just(True)),
        "where": st.sampled_from(["nested", "dotted", "both"]),
        "total": st.sampled_from([None, 0, 5, "5"]),
        "sentiment": st.sampled_from(["", "positive", "neutral", "negative", "angry"]),
        "traits": st.dictionaries(st.sampled_from(["plan", "seats", "tags", "flag"]), trait_value, max_size=3),
        "campaign": st.sampled_from([None, ("ads", "summer"), ("spam", "winter")]),
        "copies": st.sampled_from([1, 1, 1, 2]),
    }
)
customer_st = st.fixed_dictionaries(
    {
        "events": st.lists(event_st, min_size=1, max_size=9),
        # how the ids are linked: 0 own customer, 1 to id 0, 2 linked then the link deleted
        "links": st.tuples(st.sampled_from([0, 1, 2]), st.sampled_from([0, 1, 2])),
    }
)
_count = iter(range(10**9))


def _ts(minutes: float) -> str:
    return (BASE + timedelta(minutes=minutes)).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _rows(pid: str, k: int, customer: dict[str, Any]) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """(events, their retried copies, identity links). The copies go in an insert of their own: copies in
    one insert are folded into one on insert (ReplacingMergeTree, optimize_on_insert)."""
    ids = [f"c{k}-id{i}" for i in range(3)]
    events: list[bytes] = []
    retries: list[bytes] = []
    links: list[bytes] = []
    for n, e in enumerate(customer["events"]):
        properties: dict[str, Any] = {}
        if e["score"] is not None:
            properties["score"] = e["score"]
            if e["where"] in ("nested", "both"):
                properties["review"] = {"score": e["score"]}
            if e["where"] in ("dotted", "both"):
                properties["review.score"] = 1 if e["where"] == "both" else e["score"]
        if e["total"] is not None:
            properties["order"] = {"total": e["total"]}
        kind = e["kind"]
        context = {"campaign": {"source": e["campaign"][0], "name": e["campaign"][1]}} if e["campaign"] else {}
        for copy in range(e["copies"]):
            values = {
                "project_id": pid,
                "message_id": f"m{k}-{n}",
                "type": "page" if kind == "page" else "identify" if kind == "identify" else "track",
                "event": "" if kind in ("page", "identify") else kind,
                "channel": e["channel"],
                "touchpoint": "",
                "sentiment": e["sentiment"],
                "distinct_id": ids[e["id"]],
                "user_id": ids[e["id"]],
                "anonymous_id": "",
                "group_id": "",
                "previous_id": "",
                # a retried copy: received later, its time skew-corrected a little differently
                "timestamp": _ts(e["minute"] + copy * 0.001 * (n % 3 - 1)),
                "original_timestamp": _ts(e["minute"]),
                "sent_at": None,
                "received_at": _ts(50 + e["received"] + copy * (n % 2)),
                "properties": orjson.dumps(properties).decode(),
                "traits": orjson.dumps(e["traits"] if kind == "identify" else {}).decode(),
                "context": orjson.dumps(context).decode(),
            }
            (retries if copy else events).append(orjson.dumps([values[c] for c in EVENT_COLUMNS]) + b"\n")
    for i, link in zip((1, 2), customer["links"]):
        if link:
            links.append(orjson.dumps([pid, ids[i], ids[0], 1, 0]) + b"\n")
        if link == 2:
            links.append(orjson.dumps([pid, ids[i], ids[0], 2, 1]) + b"\n")
    return events, retries, links


async def _load(stores, pid: str, customers: list[dict[str, Any]]) -> list[str]:  # type: ignore[no-untyped-def]
    events, retries, links = [], [], []
    for k, customer in enumerate(customers):
        e, r, li = _rows(pid, k, customer)
        events += e
        retries += r
        links += li
    if links:
        await stores.clickhouse.insert_lines(
            "identities_by_customer",
            ("project_id", "distinct_id", "customer_id", "version", "is_deleted"),
            b"".join(links),
        )
        await stores.clickhouse.insert_lines(
            "identities", ("project_id", "distinct_id", "customer_id", "version", "is_deleted"), b"".join(links)
        )
    await stores.clickhouse.insert_lines("events", EVENT_COLUMNS, b"".join(events))
    if retries:
        await stores.clickhouse.insert_lines("events", EVENT_COLUMNS, b"".join(retries))
    return [f"c{k}-id{i}" for k in range(len(customers)) for i in range(3)]


def _definitions() -> Definitions:
    return Definitions.of([(validate_map(m), 1) for m in MAPS], [(validate_segment(s), 1) for s in SEGMENTS])


async def _sql_facts(stores, pid: str, facts: FactsSql, scope: str, ids: list[str]) -> Counter:  # type: ignore[no-untyped-def]
    params: dict[str, Any] = {**facts.params, "project_id": pid, "build": 7}
    if scope == "ids":
        current = await identities.current_customers(stores.clickhouse, pid, ids)
        members = await identities.members_of(stores.clickhouse, pid, sorted(set(current.values())))
        owned = [(i, c) for c, m in members.items() for i in m]
        params.update(ids=[i for i, _ in owned], owners=[c for _, c in owned])
    _, rows = await stores.clickhouse.query(
        f"SELECT map_name, build, customer_id, segments, fact, stage, toUnixTimestamp64Milli(at), converted, wait_ms, "
        f"touchpoint, channel, from_stage, move_kind, repeat, sentiment, sum(n) FROM ({facts.desired(scope)}) GROUP BY ALL",
        params,
    )
    return Counter({(*row[:3], keys_of(row[3]), *row[4:-1]): row[-1] for row in rows})


@pytest.mark.slow
@settings(
    max_examples=int(os.environ.get("FACTS_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(customers=st.lists(customer_st, min_size=1, max_size=6))
async def test_sql_facts_equal_the_python_fold(stores, project, customers) -> None:  # type: ignore[no-untyped-def]
    pid = f"{project.id}-{next(_count)}"  # a fresh project per example: hypothesis reuses the fixture
    ids = await _load(stores, pid, customers)
    definitions = _definitions()
    expected = await python_facts(stores.clickhouse, pid, definitions, 7, ids)
    facts = FactsSql(definitions)
    assert await _sql_facts(stores, pid, facts, "ids", ids) == expected
    assert await _sql_facts(stores, pid, facts, "project", ids) == expected


async def _server_ms(stores) -> int:  # type: ignore[no-untyped-def]
    _, rows = await stores.clickhouse.query("SELECT toUnixTimestamp64Milli(now64(3))")
    return int(rows[0][0])


async def _rows_written(stores, pid: str, write: Any) -> int:  # type: ignore[no-untyped-def]
    """How many rows awaiting ``write`` adds to the project's ``stage_facts`` (its merges stopped meanwhile, so
    none folds rows away): a difference of nothing writes none."""
    ch = stores.clickhouse
    count = "SELECT count() FROM stage_facts WHERE project_id = {p:String}"
    await ch.command("SYSTEM STOP MERGES stage_facts")
    try:
        _, before = await ch.query(count, {"p": pid})
        await write
        _, after = await ch.query(count, {"p": pid})
    finally:
        await ch.command("SYSTEM START MERGES stage_facts")
    return int(after[0][0]) - int(before[0][0])


async def _held(stores, pid: str, ids: list[str]) -> Counter:  # type: ignore[no-untyped-def]
    net = await current_facts(stores.clickhouse, pid, sorted(set(ids)), 7)
    return Counter({(*fact[:6], int(fact[6]), *fact[7:]): n for fact, n in net.items() if n})


@pytest.mark.slow
@settings(
    max_examples=int(os.environ.get("FACTS_EXAMPLES", "25")),
    deadline=None,
    # No shrinking: an example is a build and three merges, and shrinking one took over five minutes; a
    # failure is reported as generated (its customers and seed).
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(customers=st.lists(customer_st, min_size=1, max_size=5), seed=st.integers(0, 2**32 - 1))
async def test_merging_new_rows_onto_stored_inputs_equals_the_python_fold(stores, project, customers, seed) -> None:  # type: ignore[no-untyped-def]
    """The live path (StateWriter.append): a build made from some of the rows, then the rest arriving in
    inserts of their own, each merged onto the stored inputs from its stamp on, leaves the build holding
    exactly the oracle's facts of all the rows: later and earlier events, retried copies arriving before or
    after the first, identifies changing the segments, new customers. Merging a window again writes nothing."""
    pid = f"{project.id}-{next(_count)}"
    definitions = _definitions()
    writer = StateWriter(stores.clickhouse, stores.pg)
    rng = random.Random(seed)
    batches: list[list[bytes]] = [[], [], []]
    links: list[bytes] = []
    for k, customer in enumerate(customers):
        events, retries, linked = _rows(pid, k, customer)
        links += linked
        for line in events + retries:  # copies of one message in separate inserts (see _rows)
            batches[rng.randrange(3)].append(line)
    ids = [f"c{k}-id{i}" for k in range(len(customers)) for i in range(3)]
    if links:  # the customers are what they are from the start: a change of customer is refresh()'s
        for table in ("identities_by_customer", "identities"):
            await stores.clickhouse.insert_lines(
                table, ("project_id", "distinct_id", "customer_id", "version", "is_deleted"), b"".join(links)
            )
    # Merges of `events` stopped: one keeps the copy of a message inserted last where receipts are equal, so the
    # oracle, reading the events afterwards, could see another copy than the one the rule picks (equal
    # receipts: the earlier time), which the inputs keep once they have seen both.
    await stores.clickhouse.command("SYSTEM STOP MERGES events")
    try:
        await _load_in_batches(stores, pid, definitions, writer, batches)
        assert await _held(stores, pid, ids) == await python_facts(stores.clickhouse, pid, definitions, 7, ids)
    finally:
        await stores.clickhouse.command("SYSTEM START MERGES events")
    assert await _rows_written(stores, pid, writer.append(pid, definitions, 7, set(ids), 0)) == 0


async def _load_in_batches(  # type: ignore[no-untyped-def]
    stores, pid: str, definitions: Definitions, writer: StateWriter, batches: list[list[bytes]]
) -> None:
    """The first batch, then a build; then each other batch, merged onto the build's inputs."""
    for line in batches[0]:  # one insert per row: retried copies never share one (ReplacingMergeTree folds them)
        await stores.clickhouse.insert_lines("events", EVENT_COLUMNS, line)
    await writer.build_all(pid, definitions, 7)
    for batch in batches[1:]:
        since = await _server_ms(stores) - 1
        for line in batch:
            await stores.clickhouse.insert_lines("events", EVENT_COLUMNS, line)
        touched = {orjson.loads(line)[EVENT_COLUMNS.index("distinct_id")] for line in batch}
        await writer.append(pid, definitions, 7, touched, since)


async def test_refresh_writes_the_difference_and_converges(stores, project) -> None:  # type: ignore[no-untyped-def]
    """A refresh writes what the build lacks and withdraws what it no longer should hold: after events
    arrive, an id is re-pointed to another customer (the old one retired) and a refresh is repeated, the
    build's net facts are exactly the oracle's, and a repeated refresh writes nothing."""
    pid = project.id
    definitions = _definitions()
    writer = StateWriter(stores.clickhouse, stores.pg)
    first = {
        "events": [
            {
                "id": 0,
                "kind": "A",
                "channel": "web",
                "minute": 1,
                "received": 0,
                "score": None,
                "where": "nested",
                "total": None,
                "sentiment": "",
                "traits": {},
                "campaign": None,
                "copies": 1,
            },
            {
                "id": 1,
                "kind": "B",
                "channel": "web",
                "minute": 2,
                "received": 0,
                "score": 5,
                "where": "nested",
                "total": None,
                "sentiment": "",
                "traits": {},
                "campaign": None,
                "copies": 2,
            },
        ],
        "links": (0, 0),
    }
    ids = await _load(stores, pid, [first])

    async def held() -> Counter:
        net = await current_facts(stores.clickhouse, pid, sorted(set(ids)), 7)
        return Counter({(*fact[:6], int(fact[6]), *fact[7:]): n for fact, n in net.items()})

    assert await _rows_written(stores, pid, writer.refresh(pid, definitions, 7, set(ids))) > 0
    assert await held() == await python_facts(stores.clickhouse, pid, definitions, 7, ids)
    # c0-id1 joins c0-id0's customer: c0-id1's own customer is retired, its facts withdrawn
    link = orjson.dumps([pid, "c0-id1", "c0-id0", 1, 0]) + b"\n"
    await stores.clickhouse.insert_lines(
        "identities_by_customer", ("project_id", "distinct_id", "customer_id", "version", "is_deleted"), link
    )
    await stores.clickhouse.insert_lines(
        "identities", ("project_id", "distinct_id", "customer_id", "version", "is_deleted"), link
    )
    assert await _rows_written(stores, pid, writer.refresh(pid, definitions, 7, {"c0-id1"})) > 0
    after = await held()
    assert after == await python_facts(stores.clickhouse, pid, definitions, 7, ids)
    assert {fact[2] for fact in after} == {"c0-id0"}
    assert await _rows_written(stores, pid, writer.refresh(pid, definitions, 7, set(ids))) == 0


async def test_a_customer_refreshed_without_events_keeps_empty_inputs(stores, project) -> None:  # type: ignore[no-untyped-def]
    """A full refresh of a customer whose every event is gone (deleted between a forget's two steps, say)
    withdraws their facts and empties their stored inputs: a later event of theirs is merged onto nothing,
    so only it counts, never the events that were deleted."""
    pid = project.id
    definitions = _definitions()
    writer = StateWriter(stores.clickhouse, stores.pg)
    event = {"id": 0, "kind": "A", "channel": "web", "minute": 1, "received": 0, "score": None, "where": "nested",
             "total": None, "sentiment": "negative", "traits": {}, "campaign": None, "copies": 1}  # fmt: skip
    old, _, _ = _rows(pid, 0, {"events": [event, {**event, "kind": "C", "minute": 2}], "links": (0, 0)})
    await stores.clickhouse.insert_lines("events", EVENT_COLUMNS, b"".join(old))
    await writer.build_all(pid, definitions, 7)
    assert await _held(stores, pid, ["c0-id0"])
    await stores.clickhouse.command(
        "DELETE FROM events WHERE project_id = {p:String} AND distinct_id = 'c0-id0'", {"p": pid}
    )
    await writer.refresh(pid, definitions, 7, {"c0-id0"})
    assert await _held(stores, pid, ["c0-id0"]) == Counter()
    since = await _server_ms(stores) - 1
    new, _, _ = _rows(pid, 0, {"events": [{**event, "kind": "D", "minute": 5}], "links": (0, 0)})
    await stores.clickhouse.insert_lines("events", EVENT_COLUMNS, new[0].replace(b'"m0-0"', b'"m0-new"'))
    await writer.append(pid, definitions, 7, {"c0-id0"}, since)
    expected = await python_facts(stores.clickhouse, pid, definitions, 7, ["c0-id0"])
    assert expected and await _held(stores, pid, ["c0-id0"]) == expected


async def test_a_refresh_never_shows_a_customer_with_events_emptied(stores, project) -> None:  # type: ignore[no-untyped-def]
    """A refresh stores its customers' inputs, then empties those of customers left without events (one with
    events has the greater generation): a reader of the stored inputs between the two statements (a preview
    folding them takes no writers' lock, query/kpi_preview.py) sees a customer with events as before or after,
    never emptied."""
    pid = project.id
    definitions = _definitions()
    seen: list[dict[str, int]] = []

    class Watching:  # the real ClickHouse; after each insert into stage_inputs, reads what a reader would see
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        async def execute(self, sql: str, parameters: dict[str, Any] | None = None) -> None:
            await self.inner.execute(sql, parameters)
            if "INSERT INTO stage_inputs" in sql:
                _, rows = await self.inner.query(
                    "SELECT customer_id, length(staged) FROM stage_inputs FINAL "
                    "WHERE project_id = {p:String} AND build = 7",
                    {"p": pid},
                )
                seen.append(dict(rows))

    event = {"id": 0, "kind": "A", "channel": "web", "minute": 1, "received": 0, "score": None, "where": "nested",
             "total": None, "sentiment": "negative", "traits": {}, "campaign": None, "copies": 1}  # fmt: skip
    rows, _, _ = _rows(pid, 0, {"events": [event, {**event, "kind": "C", "minute": 2}], "links": (0, 0)})
    await stores.clickhouse.insert_lines("events", EVENT_COLUMNS, b"".join(rows))
    await StateWriter(stores.clickhouse, stores.pg).build_all(pid, definitions, 7)
    watching: Any = Watching(stores.clickhouse)
    await StateWriter(watching, stores.pg).refresh(pid, definitions, 7, {"c0-id0"})
    assert [s.get("c0-id0") for s in seen] == [2, 2]


async def test_a_merge_stores_only_the_inputs_it_changes(stores, project) -> None:  # type: ignore[no-untyped-def]
    """An event no rule stages changes nothing of a customer's inputs: merging it stores no inputs row, so
    nothing is folded for it, and no write is made or told (no KPI answer waits for one, none cached is
    forgotten). An event a rule stages stores one, and the facts stay the oracle's throughout."""
    pid = project.id
    ch = stores.clickhouse
    definitions = _definitions()
    writer = StateWriter(ch, stores.pg)
    told: list[str] = []
    writer.on_serving_write = told.append
    event = {"id": 0, "kind": "A", "channel": "web", "minute": 1, "received": 0, "score": None, "where": "nested",
             "total": None, "sentiment": "", "traits": {}, "campaign": None, "copies": 1}  # fmt: skip
    lines, _, _ = _rows(pid, 0, {"events": [event, {**event, "kind": "Z", "minute": 3}], "links": (0, 0)})
    await ch.insert_lines("events", EVENT_COLUMNS, lines[0])
    await writer.build_all(pid, definitions, 7)

    async def stored_by_merging(line: bytes) -> int:
        count = "SELECT count() FROM stage_inputs WHERE project_id = {p:String} AND build = 7"
        since = await _server_ms(stores) - 1
        await ch.insert_lines("events", EVENT_COLUMNS, line)
        await ch.command("SYSTEM STOP MERGES stage_inputs")
        try:
            _, before = await ch.query(count, {"p": pid})
            await writer.append(pid, definitions, 7, {"c0-id0"}, since)
            _, after = await ch.query(count, {"p": pid})
        finally:
            await ch.command("SYSTEM START MERGES stage_inputs")
        assert await _held(stores, pid, ["c0-id0"]) == await python_facts(ch, pid, definitions, 7, ["c0-id0"])
        return int(after[0][0]) - int(before[0][0])

    assert await stored_by_merging(lines[1]) == 0  # "Z": no rule stages it
    assert told == []
    staged, _, _ = _rows(pid, 0, {"events": [{**event, "kind": "C", "minute": 4}], "links": (0, 0)})
    assert await stored_by_merging(staged[0].replace(b'"m0-0"', b'"m0-buy"')) == 1
    assert told == [pid]


async def _insert_two_touchpoints_each(stores, pid: str, customers: int) -> None:  # type: ignore[no-untyped-def]
    """``customers`` customers (c0-id0, c1-id0, …), each with an A and a C event, inserted into ``events``."""
    event = {"id": 0, "kind": "A", "channel": "web", "minute": 1, "received": 0, "score": None, "where": "nested",
             "total": None, "sentiment": "negative", "traits": {}, "campaign": None, "copies": 1}  # fmt: skip
    lines: list[bytes] = []
    for k in range(customers):
        rows, _, _ = _rows(pid, k, {"events": [event, {**event, "kind": "C", "minute": 2}], "links": (0, 0)})
        lines += rows
    await stores.clickhouse.insert_lines("events", EVENT_COLUMNS, b"".join(lines))


async def test_a_rebuild_folds_each_customers_newest_inputs(stores, project) -> None:  # type: ignore[no-untyped-def]
    """A forget that lands between a rebuild's two statements (inputs stored, facts not yet folded) empties the
    new build's inputs of that customer: the facts folded next leave the customer out."""
    pid = project.id
    definitions = _definitions()
    writer = StateWriter(stores.clickhouse, stores.pg)
    await _insert_two_touchpoints_each(stores, pid, 2)
    sql = writer.statements(pid, definitions)
    params = {**sql.params, "project_id": pid, "build": 9}
    await stores.clickhouse.execute(sql.insert_inputs("project"), {**params, "generation": 1})
    await stores.clickhouse.execute(EMPTY_INPUTS_SQL, {**params, "customers": ["c0-id0"], "generation": 2})
    await stores.clickhouse.execute(sql.insert_all_from_inputs(", ".join(FACT_COLUMNS)), {**params, "inputs_build": 9})
    net = await current_facts(stores.clickhouse, pid, ["c0-id0", "c1-id0"], 9)
    assert {fact[2] for fact, n in net.items() if n} == {"c1-id0"}


async def test_a_copy_of_the_inputs_leaves_out_those_emptied_last(stores, project) -> None:  # type: ignore[no-untyped-def]
    """A rebuild that copies the serving build's inputs takes each customer's newest row, and leaves out the customers
    whose newest row holds nothing (a forgotten id stays gone), even when an older row of theirs holds events."""
    pid = project.id
    definitions = _definitions()
    await _insert_two_touchpoints_each(stores, pid, 3)
    sql = StateWriter(stores.clickhouse).statements(pid, definitions)
    params = {**sql.params, "project_id": pid, "build": 9}
    await stores.clickhouse.command("SYSTEM STOP MERGES stage_inputs")  # every row stays as written
    try:
        await stores.clickhouse.execute(sql.insert_inputs("project"), {**params, "generation": 1})
        await stores.clickhouse.execute(EMPTY_INPUTS_SQL, {**params, "customers": ["c0-id0"], "generation": 2})
        await stores.clickhouse.execute(COPY_INPUTS_SQL, {"project_id": pid, "build": 10, "from_build": 9})
    finally:
        await stores.clickhouse.command("SYSTEM START MERGES stage_inputs")
    _, rows = await stores.clickhouse.query(
        "SELECT customer_id, generation, length(staged) FROM stage_inputs WHERE project_id = {p:String} "
        "AND build = 10 ORDER BY customer_id",
        {"p": pid},
    )
    assert [(c, int(g), n > 0) for c, g, n in rows] == [("c1-id0", 1, True), ("c2-id0", 1, True)]


# An edit's example is two builds and more: a third as many as the other tests, not shrunk.
_edit_examples = settings(
    max_examples=int(os.environ.get("FACTS_EXAMPLES", "25")) // 3 + 1,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _before(edit: str) -> Definitions:
    """The definitions an edit starts from: _definitions(), or for "typed" buy-web taking orders of total 0."""
    if edit != "typed":
        return _definitions()
    maps = orjson.loads(orjson.dumps(MAPS))
    buy_web = next(tp for tp in maps[0]["touchpoints"] if tp["id"] == "buy-web")
    buy_web["match"]["where"] = [{"property": "order.total", "op": "equals", "value": 0}]
    return Definitions.of([(validate_map(m), 1) for m in maps], [(validate_segment(s), 1) for s in SEGMENTS])


def _edited(edit: str) -> list[dict[str, Any]]:
    """MAPS with one kind of rule edit (query/facts/restage.py)."""
    maps = orjson.loads(orjson.dumps(MAPS))
    funnel, service = maps[0], maps[1]
    by_id = {tp["id"]: tp for tp in funnel["touchpoints"]}
    if edit == "renumbered":  # every rule elsewhere, every event staged as before: nothing to read again
        funnel["touchpoints"] = [by_id[i] for i in ("loyal", "page", "ad", "buy-web", "buy-other", "rated")]
        call, fixed, praise = service["touchpoints"]  # a phone call's E or D still goes to `call`, as before
        service["touchpoints"] = [call, praise, fixed]
        return [service, funnel, maps[2]]
    if edit == "reordered":  # no rule changed, but a phone call's D or E now goes to `praise` or `fixed`
        service["touchpoints"].reverse()
        return maps
    if edit == "narrowed":  # one rule narrowed: only some customers' events staged otherwise
        by_id["ad"]["match"]["channel"] = "web"
        return maps
    if edit == "typed":  # 0 became false (from _before): equal in Python, not as JSON (booleans only equal booleans)
        by_id["buy-web"]["match"]["where"] = [{"property": "order.total", "op": "equals", "value": False}]
        return maps
    # Everything a rule edit can do at once: the first match changed by the order, a sentiment, a touchpoint
    # removed and one added, a map added (one removed makes every event read: the next test).
    by_id["rated"]["sentiment"] = "neutral"
    funnel["touchpoints"] = [by_id[i] for i in ("buy-other", "buy-web", "ad", "rated", "loyal")]
    funnel["touchpoints"].append({"id": "x-seen", "stage": "consider", "match": {"event": "X"}})
    extra = {"name": "extra", "stages": [{"id": "one", "name": "One"}], "touchpoints": [
        {"id": "any-a", "stage": "one", "match": {"event": "A", "channel": "store"}}]}  # fmt: skip
    return [extra, service, funnel, maps[2]]


@pytest.mark.slow
@_edit_examples
@given(customers=st.lists(customer_st, min_size=1, max_size=6))
@pytest.mark.parametrize("edit", ["renumbered", "reordered", "narrowed", "typed", "everything"])
async def test_a_rule_edit_restaged_from_the_stored_inputs_equals_the_python_fold(  # type: ignore[no-untyped-def]
    stores, project, customers, edit
) -> None:
    """A rule edit rebuilt from the old build's inputs (query/facts/restage.py): the scan lists the ids whose events
    the new rules stage otherwise, the copy renumbers everyone else's rules, the facts are folded from those (or,
    where only the staging changed, copied), those ids are refreshed; the new build then holds exactly the oracle's
    facts under the new rules. A mere renumbering lists no id. Where only the staging changed, the old build with
    those ids' customers computed apart and moved in holds them too, and inputs that fold to them."""
    from query.facts.restage import Restaging

    pid = f"{project.id}-{next(_count)}"
    ids = await _load(stores, pid, customers)
    old = _before(edit)
    new = Definitions.of([(validate_map(m), 2) for m in _edited(edit)], [(validate_segment(s), 1) for s in SEGMENTS])
    writer = StateWriter(stores.clickhouse, stores.pg)
    await writer.build_all(pid, old, 7)
    restage = Restaging(old, new)
    assert restage.possible
    assert restage.facts_kept == (edit != "everything")  # else some touchpoint, stage or map differs: a fold
    _, rows = await stores.clickhouse.query(restage.scan_sql, {**restage.params, "project_id": pid, "limit": 10**6})
    restaged = {r[0] for r in rows}
    if edit == "renumbered":
        assert restaged == set()
    await writer.build_all(pid, new, 8, inputs_of=7, restage=restage)
    await writer.refresh(pid, new, 8, restaged, serving=False)
    held = await current_facts(stores.clickhouse, pid, ids, 8)
    assert Counter({f: n for f, n in held.items() if n}) == await python_facts(stores.clickhouse, pid, new, 8, ids)
    if not restage.facts_kept:
        return
    # Only the staging changed: the old build itself serves the edit once the listed ids' customers, computed apart
    # with the new rules, are moved into it (StageStateUpdater._relabel_rules); its inputs are then the new rules'
    # too (numbered by touchpoint id): the facts folded from them again are the oracle's as well.
    await writer.refresh(pid, new, 9, restaged, serving=False)
    moved: list[bool] = []

    async def then() -> None:
        moved.append(True)

    from query.facts.updater import CUSTOMERS_OF_BUILD_SQL

    _, rows = await stores.clickhouse.query(CUSTOMERS_OF_BUILD_SQL, {"project_id": pid, "build": 9})
    await writer.transplant(pid, 7, 9, sorted(r[0] for r in rows), then)
    assert moved == [True]
    await writer.fold_inputs_of(pid, new, 10, 7)
    for build in (7, 10):
        held = await current_facts(stores.clickhouse, pid, ids, build)
        assert Counter({f: n for f, n in held.items() if n}) == await python_facts(
            stores.clickhouse, pid, new, build, ids
        ), build


def _customer(events: list[tuple[str, str, int]]) -> dict[str, Any]:
    """One customer of ``customer_st`` with the given (kind, channel, minute) events and nothing else."""
    plain: dict[str, Any] = {"id": 0, "received": 0, "score": None, "where": "nested", "total": 5, "sentiment": "", "traits": {},
             "campaign": None, "copies": 1}  # fmt: skip
    return {"events": [{**plain, "kind": k, "channel": c, "minute": m} for k, c, m in events], "links": (0, 0)}


# Aware 10 minutes before consider (converted within 0.01 days, not within 0.004), a purchase a minute after.
_FLIPPING = [_customer([("A", "web", 0), ("B", "web", 10), ("C", "web", 11)]), _customer([("E", "phone", 2)])]


def _windows(aware: float, contact: float, buy: float, version: int) -> Definitions:
    """MAPS with other conversion windows (days) for three stages, as their ``version``."""
    maps = orjson.loads(orjson.dumps(MAPS))
    maps[0]["stages"][0]["conversion_window_days"] = aware
    maps[0]["stages"][2]["conversion_window_days"] = buy
    maps[1]["stages"][0]["conversion_window_days"] = contact
    return Definitions.of([(validate_map(m), version) for m in maps], [(validate_segment(s), 1) for s in SEGMENTS])


@pytest.mark.slow
@_edit_examples
@given(customers=st.lists(customer_st, min_size=1, max_size=6))
@example(customers=_FLIPPING)
async def test_a_window_edit_corrected_from_the_stored_inputs_equals_the_python_fold(  # type: ignore[no-untyped-def]
    stores, project, customers
) -> None:
    """A window edit (two windows narrowed, one widened, within the minutes the events are apart): the corrections
    computed from a build's stored inputs into a build of their own, added to it, make its facts exactly the
    oracle's under the new windows (StageStateUpdater._reconvert); so do the corrections computed again for every
    customer written since (here all of them: generation 0), those computed first left out."""
    pid = f"{project.id}-{next(_count)}"
    ids = await _load(stores, pid, customers)
    old, new = _windows(0.01, 0.02, 0.002, 1), _windows(0.004, 0.003, 0.008, 2)
    assert old.window_free_key == new.window_free_key and old.facts_key != new.facts_key
    writer = StateWriter(stores.clickhouse, stores.pg)
    for build in (7, 9):
        await writer.build_all(pid, old, build)
    await writer.reconvert(pid, old, new, 7, 8)
    _, rows = await stores.clickhouse.query(
        "SELECT count() FROM stage_facts WHERE project_id = {p:String} AND build = 8", {"p": pid}
    )
    if customers == _FLIPPING:  # an example that certainly corrects some: the aware entry (10 minutes)
        assert rows[0][0] > 0
    relabelled: list[int] = []
    for build, generation in ((7, 2**62), (9, 0)):

        async def then(build: int = build) -> None:
            relabelled.append(build)

        await writer.reconverted(pid, old, new, build, 8, generation, then)
    assert relabelled == [7, 9]
    for build in (7, 9):
        held = await current_facts(stores.clickhouse, pid, ids, build)
        assert Counter({f: n for f, n in held.items() if n}) == await python_facts(
            stores.clickhouse, pid, new, build, ids
        ), build


async def test_a_rule_edit_is_restaged_only_while_the_segments_keep_their_inputs() -> None:
    """The copy keeps each customer's first touch and traits: a segment reading another trait needs every event;
    so does a map removed."""
    from query.facts.restage import Restaging

    old = _definitions()
    maps = [(validate_map(m), 2) for m in _edited("narrowed")]
    same = Definitions.of(maps, [(validate_segment(s), 2) for s in SEGMENTS])
    assert Restaging(old, same).possible
    pro: dict[str, Any] = {"name": "vip", "rules": [{"field": "traits.plan", "op": "equals", "value": "pro"}]}
    other_value = [pro, *SEGMENTS[1:]]
    assert Restaging(old, Definitions.of(maps, [(validate_segment(s), 2) for s in other_value])).possible
    other_trait = [{"name": "country", "rules": [{"field": "traits.country", "op": "exists"}]}, *SEGMENTS]
    assert not Restaging(old, Definitions.of(maps, [(validate_segment(s), 2) for s in other_trait])).possible
    # A map removed may have kept a message's other copy (the inputs keep one per message among those staged).
    assert not Restaging(old, Definitions.of(maps[:2], [(validate_segment(s), 2) for s in SEGMENTS])).possible
