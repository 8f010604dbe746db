"""Timelines (migration 0007): journeys read each id's events off a copy laid out for one customer's read,
and must read exactly what the events table holds: each message once, in time order."""

from __future__ import annotations

import asyncio

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import orjson

from journeys.events import EVENT_COLUMNS
from query.reads import EVENTS_SQL, _event, customer_events

REPO = Path(__file__).resolve().parent.parent


def _row(project_id: str, distinct_id: str, message_id: str, at: str, **fields: str) -> bytes:
    values = {
        "project_id": project_id,
        "message_id": message_id,
        "type": "track",
        "event": "Viewed",
        "channel": "web",
        "touchpoint": "",
        "sentiment": "",
        "distinct_id": distinct_id,
        "user_id": distinct_id,
        "anonymous_id": "",
        "group_id": "",
        "previous_id": "",
        "timestamp": at,
        "original_timestamp": at,
        "sent_at": None,
        "received_at": at,
        "properties": "{}",
        "traits": "{}",
        "context": "{}",
        **fields,
    }
    return orjson.dumps([values[c] for c in EVENT_COLUMNS]) + b"\n"


async def _insert(stores, rows: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    await stores.clickhouse.insert_lines("events", EVENT_COLUMNS, b"".join(rows))


async def _off_events(stores, project_id: str, ids: list[str], limit: int) -> list[dict]:  # type: ignore[no-untyped-def]
    """The events table's read of the same events, decoded as production decodes it."""
    columns, rows = await stores.clickhouse.query(
        EVENTS_SQL[True, False], {"project_id": project_id, "ids": ids, "limit": limit}
    )
    return [_event(columns[1:], row[1:]) for row in rows]


async def test_timeline_reads_equal_the_events_table_across_inserts_retries_and_odd_values(stores, project) -> None:  # type: ignore[no-untyped-def]
    pid = project.id
    odd = {"q": 'say "hi"\\ \n', "ü": ["ß", 1.5, None, True], "nested": {"deep": {"x": -1}}}
    await _insert(
        stores,
        [
            _row(pid, "ann", "m2", "2026-04-02 10:00:00.500", properties=orjson.dumps(odd).decode()),
            _row(
                pid,
                "ann",
                "m1",
                "2026-04-01 09:00:00.000",
                event='Clicked "Buy"',
                channel="email",
                sentiment="positive",
            ),
            _row(pid, "anon-ann", "m0", "2026-03-31 08:00:00.000", type="page", event="", properties=""),
            _row(pid, "bob", "b1", "2026-04-01 09:00:00.000"),
        ],
    )
    # A retry of m2 in a later insert, stamped earlier (clock skew): both copies are stored, in two timeline
    # rows; the earliest copy wins, as on the events table. m3 ties with m1 on time: message_id breaks it.
    await _insert(
        stores,
        [
            _row(
                pid,
                "ann",
                "m2",
                "2026-04-01 23:59:59.999",
                received_at="2026-04-03 00:00:00.000",
                properties='{"copy": 2}',
            ),
            _row(pid, "ann", "m3", "2026-04-01 09:00:00.000"),
        ],
    )
    _, rows = await stores.clickhouse.query(
        "SELECT distinct_id, count() FROM timelines WHERE project_id = {p:String} GROUP BY distinct_id ORDER BY 1",
        {"p": pid},
    )
    assert rows == [("ann", 4), ("anon-ann", 1), ("bob", 1)]
    ids = ["anon-ann", "ann"]
    journey = await customer_events(stores.clickhouse, pid, ids, 100, for_journey=True)
    assert journey == await _off_events(stores, pid, ids, 100)
    assert [(e["message_id"], e["timestamp"]) for e in journey] == [
        ("m0", "2026-03-31T08:00:00.000Z"),
        ("m1", "2026-04-01T09:00:00.000Z"),
        ("m3", "2026-04-01T09:00:00.000Z"),
        ("m2", "2026-04-01T23:59:59.999Z"),
    ]
    assert journey[0]["properties"] == {} and journey[3]["properties"] == {"copy": 2}
    assert journey[1]["event"] == 'Clicked "Buy"' and journey[1]["sentiment"] == "positive"
    # Another project's key never reaches these rows.
    assert await customer_events(stores.clickhouse, "someone-else", ids, 100, for_journey=True) == []


async def test_past_the_limit_the_earliest_events_are_read_off_the_events_table(stores, project) -> None:  # type: ignore[no-untyped-def]
    pid = project.id
    await _insert(stores, [_row(pid, "busy", f"e{i}", f"2026-05-0{9 - i} 12:00:00.000") for i in range(5)])
    journey = await customer_events(stores.clickhouse, pid, ["busy"], 3, for_journey=True)
    assert [e["message_id"] for e in journey] == ["e4", "e3", "e2"]
    assert journey == await _off_events(stores, pid, ["busy"], 3)


async def test_a_customer_with_thousands_of_events_reads_the_same_either_way(stores, project) -> None:  # type: ignore[no-untyped-def]
    pid = project.id
    rows = [
        _row(pid, "bot", f"x{i:05d}", f"2026-06-01 00:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}")
        for i in range(2500)
    ]
    await _insert(stores, rows[:1500])
    await _insert(stores, rows[1000:])  # 500 retried
    for limit in (10_000, 2_500, 2_000):  # off timelines; 3 000 rows for 2 500 events: off events; off events
        journey = await customer_events(stores.clickhouse, pid, ["bot"], limit, for_journey=True)
        assert len(journey) == min(limit, 2500) and journey == await _off_events(stores, pid, ["bot"], limit)


async def test_journeys_read_timelines_and_only_past_the_limit_events(stores, project, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The answers are the same either way by design, so which table answered is checked on the SQL sent."""
    pid = project.id
    await _insert(stores, [_row(pid, "pat", f"p{i}", f"2026-07-01 00:00:0{i}.000") for i in range(4)])
    sent: list[str] = []
    query = stores.clickhouse.query

    async def recording(sql, parameters=None):  # type: ignore[no-untyped-def]
        sent.append(sql)
        return await query(sql, parameters)

    monkeypatch.setattr(stores.clickhouse, "query", recording)
    for limit, tables in ((4, ["timelines"]), (3, ["timelines", "events"])):
        sent.clear()
        journey = await customer_events(stores.clickhouse, pid, ["pat"], limit, for_journey=True)
        assert [e["message_id"] for e in journey] == [f"p{i}" for i in range(limit)]
        assert [
            ("FROM timelines" in sql and "timelines") or ("FROM events" in sql and "events") for sql in sent
        ] == tables


_UPGRADE = textwrap.dedent("""
    import asyncio, json, sys
    from journeys.clickhouse import ClickHouse
    from journeys.migrate import clickhouse_migrations, migrate_clickhouse
    from journeys.events import EVENT_COLUMNS

    async def main():
        ch = await ClickHouse.connect("chdb://" + sys.argv[1])
        # An install from before timelines: migrations up to 0006 applied, events stored.
        await migrate_clickhouse(ch)  # creates the bookkeeping table; then pretend 0007 never ran
        await ch.command("DROP VIEW timelines_mv")
        await ch.command("DROP TABLE timelines")
        await ch.command("DELETE FROM journeys_schema_migrations WHERE name = '0007_timelines.sql'")
        row = lambda mid, at: json.dumps(["p", mid, "track", "Old", "store", "", "", "cust", "cust", "", "", "",
                                          at, at, None, at, '{"k": 1}', "{}", "{}"]) + "\\n"
        await ch.insert_lines("events", EVENT_COLUMNS, "".join(row(f"o{i}", f"2025-0{i + 1}-01 00:00:00.000")
                                                            for i in range(3)).encode())
        applied = await migrate_clickhouse(ch)
        _, rows = await ch.query("SELECT distinct_id, entry FROM timelines")
        print(json.dumps({"applied": applied, "rows": rows}))
        await ch.close()

    asyncio.run(main())
""")


def test_upgrading_fills_timelines_with_the_events_stored_before(tmp_path: Path) -> None:
    # chDB hosts one engine per process and the session's stores hold theirs: upgrade in a process of its own.
    done = subprocess.run(
        [sys.executable, "-c", _UPGRADE, str(tmp_path / "clickhouse")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["applied"] == ["0007_timelines.sql"]
    assert {distinct_id for distinct_id, _ in result["rows"]} == {"cust"}
    items = [orjson.loads(entry) for _, entry in result["rows"]]
    assert sorted(item[0] for item in items) == ["o0", "o1", "o2"]
    assert all(item[1:5] == ["track", "Old", "store", ""] and item[7] == {"k": 1} for item in items)
    expected_ms = {f"o{i}": int(datetime(2025, i + 1, 1, tzinfo=timezone.utc).timestamp() * 1000) for i in range(3)}
    assert all(item[5] == item[6] == expected_ms[item[0]] for item in items)


async def test_no_read_changes_when_clickhouse_merges_a_retry_away(stores, project) -> None:  # type: ignore[no-untyped-def]
    """A merge of `events` keeps the copy received last (ReplacingMergeTree(received_at)); every read keeps
    that copy from the start — events, journey (timelines, never merged) and the stage facts' read — so no
    answer depends on whether a merge has run."""
    from query.maps import validate_map
    from query.facts.compute import FactsSql
    from query.facts.model import Definitions
    from test_journey import MAP

    pid = project.id
    await _insert(
        stores,
        [
            _row(
                pid,
                "rita",
                "late",
                "2026-08-01 10:00:00.000",
                received_at="2026-08-01 10:00:01.000",
                event="Email Clicked",
                channel="email",
            ),
            _row(
                pid,
                "rita",
                "early",
                "2026-08-02 10:00:00.000",
                received_at="2026-08-02 10:00:01.000",
                event="Ad Viewed",
                channel="ads",
            ),
        ],
    )
    # The retries, received later: one stamped later, one stamped earlier than its first copy.
    await _insert(
        stores,
        [
            _row(
                pid,
                "rita",
                "late",
                "2026-08-01 10:00:00.004",
                received_at="2026-08-03 09:00:00.000",
                event="Email Clicked",
                channel="email",
            ),
            _row(
                pid,
                "rita",
                "early",
                "2026-08-02 09:59:59.996",
                received_at="2026-08-03 09:00:00.000",
                event="Ad Viewed",
                channel="ads",
            ),
        ],
    )
    facts = FactsSql(Definitions.of([(validate_map(MAP), 1)], []))

    async def answers() -> tuple:
        _, moves = await stores.clickhouse.query(
            f"SELECT toUnixTimestamp64Milli(at), move_kind FROM ({facts.desired('ids')}) WHERE fact = 'move' ORDER BY at",
            {**facts.params, "project_id": pid, "build": 1, "ids": ["rita"], "owners": ["rita"]},
        )
        return (
            await customer_events(stores.clickhouse, pid, ["rita"], 100),
            await customer_events(stores.clickhouse, pid, ["rita"], 100, for_journey=True),
            moves,
        )

    before = await answers()
    assert [(e["message_id"], e["timestamp"]) for e in before[0]] == [
        ("late", "2026-08-01T10:00:00.004Z"),
        ("early", "2026-08-02T09:59:59.996Z"),
    ]
    assert [(e["message_id"], e["timestamp"]) for e in before[1]] == [
        (e["message_id"], e["timestamp"]) for e in before[0]
    ]
    assert before[2] == [(1785578400004, "first"), (1785664799996, "regression")]
    # OPTIMIZE … FINAL does nothing (silently) while a background merge holds one of the parts, which the
    # rest of the suite's inserts make likely: ask again until the merge has happened.
    for _ in range(100):
        await stores.clickhouse.command("OPTIMIZE TABLE events PARTITION 202608 FINAL")
        _, copies = await stores.clickhouse.query(
            "SELECT count() FROM events WHERE project_id = {p:String}", {"p": pid}
        )
        if copies == [(2,)]:
            break
        await asyncio.sleep(0.1)
    assert copies == [(2,)]  # merged: one copy of each left
    assert await answers() == before
