"""No silent loss through quarantine (docs/quarantine.md): the listing, replay (collector route and CLI), the
rate-limited log line, and /v1/stats counting a resent bad event once. Real chDB, embedded PostgreSQL and
HTTP on 127.0.0.1, as everywhere.

Replay re-validates with *today's* rules, so its tests put rows into the quarantine table themselves: events
valid today as an older collector (with stricter rules) would have quarantined them, beside ones that are
still invalid.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.quarantine import QuarantineLog, replay_message_id
from journeys.events import QUARANTINE_COLUMNS
from journeys.keys import add_key
from testkit.service import cli_env, journeys, stop_leftover_postgres
from support import basic, stored_rows, wait_drained, wait_stored

NO_NAME = [{"field": "event", "reason": "Field required"}]


@pytest.fixture
async def admin(stores, project) -> str:  # type: ignore[no-untyped-def]
    async with stores.pg.acquire() as conn:
        return await add_key(conn, project.id, "admin")


def _now() -> datetime:
    """Whole seconds: a receive time that goes in and out of ClickHouse unchanged."""
    return datetime.now(timezone.utc).replace(microsecond=0)


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _row(
    project_id: str,
    received: datetime,
    request_id: str,
    index: int,
    raw: Any,
    errors: list[dict[str, str]],
    message_id: str | None = None,
) -> bytes:
    """A quarantine row as the collector writes it (collector/ingest.py)."""
    if message_id is None:
        message_id = raw.get("messageId", "") if isinstance(raw, dict) else ""
    return (
        orjson.dumps(
            [
                project_id,
                received.timestamp(),
                request_id,
                index,
                message_id,
                orjson.dumps(errors).decode(),
                orjson.dumps(raw).decode(),
            ]
        )
        + b"\n"
    )


async def _insert_quarantine(stores, rows: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    await stores.clickhouse.insert_lines("quarantine", QUARANTINE_COLUMNS, b"".join(rows))


async def _get(http, server, path, key=None):  # type: ignore[no-untyped-def]
    async with http.get(server.make_url(path), headers=basic(key) if key else {}) as resp:
        return resp.status, await resp.json()


async def _post(http, server, path, body, key=None):  # type: ignore[no-untyped-def]
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(
        server.make_url(path), data=data, headers={"Content-Type": "application/json", **(basic(key) if key else {})}
    ) as resp:
        return resp.status, await resp.json(), resp.headers


# --------------------------------------------------------------------------------------------------------
# GET /v1/quarantine (query service, admin key)
# --------------------------------------------------------------------------------------------------------


async def test_listing_groups_by_reason_counts_each_message_once_with_samples(  # type: ignore[no-untyped-def]
    http, collector, query, stores, project, admin
):
    good = {"type": "track", "userId": "q-ok", "event": "Fine"}
    resent = {"type": "track", "userId": "q-1", "messageId": "q-bad-1", "properties": {"n": 1}}  # no event name
    anonymous = {"type": "track", "userId": "q-2"}  # no event name, no messageId
    sentiment = {"type": "track", "userId": "q-3", "event": "E", "sentiment": "ecstatic", "messageId": "q-bad-3"}
    request_ids = []
    for batch in ([good, resent, anonymous, sentiment], [good, resent]):  # the second: an SDK resending
        status, body, headers = await _post(http, collector, "/v1/batch", {"batch": batch}, project.write_key)
        assert status == 200 and body["accepted"] == 1, body
        request_ids.append(headers["X-Request-Id"])
    await wait_stored(stores, project.id, 4, table="quarantine")

    # Admin only: the samples are raw customer data.
    assert (await _get(http, query, "/v1/quarantine"))[0] == 401
    for key in (project.read_key, project.write_key):
        status, body = await _get(http, query, "/v1/quarantine", key)
        assert status == 403 and body["errors"][0]["field"] == "Authorization", body

    status, listing = await _get(http, query, "/v1/quarantine", admin)
    assert status == 200, listing
    assert listing["quarantined"] == 3 and listing["since"] is None and listing["truncated"] is False
    assert [(r["field"], r["reason"], r["count"]) for r in listing["reasons"]] == [
        ("event", "Field required", 2),  # q-bad-1 twice is one event; the id-less one is another
        ("sentiment", "must be one of positive, neutral, negative", 1),
    ]
    no_name = listing["reasons"][0]
    assert no_name["first_seen"] < no_name["last_seen"]  # first and second delivery
    samples = no_name["samples"]
    assert sorted(orjson.dumps(s["raw"], option=orjson.OPT_SORT_KEYS) for s in samples) == sorted(
        orjson.dumps(e, option=orjson.OPT_SORT_KEYS) for e in (resent, anonymous)
    )  # one sample per event, not per copy
    by_id = {s["message_id"]: s for s in samples}
    assert by_id["q-bad-1"]["request_id"] == request_ids[1]  # the newest copy
    assert by_id["q-bad-1"]["received_at"] == no_name["last_seen"]
    assert by_id[""]["request_id"] == request_ids[0] and by_id[""]["batch_index"] == 2
    assert by_id[""]["errors"] == NO_NAME
    assert listing["reasons"][1]["samples"][0]["raw"] == sentiment

    # limit and since, each bad one answered 400 naming it.
    status, one = await _get(http, query, "/v1/quarantine?limit=1", admin)
    assert status == 200 and len(one["reasons"]) == 1 and one["truncated"] is True and one["quarantined"] == 3
    for bad in ("0", "1001", "x", "-1", "1.5"):
        status, body = await _get(http, query, f"/v1/quarantine?limit={bad}", admin)
        assert status == 400 and body["errors"][0]["field"] == "limit", (bad, body)
    for bad in ("yesterday", "2026-13-01", "", "2026-01-01T00:00:00 01:00"):
        status, body = await _get(http, query, f"/v1/quarantine?since={bad}", admin)
        assert status == 400 and body["errors"][0]["field"] == "since" and "ISO-8601" in body["errors"][0]["reason"], (
            bad,
            body,
        )
    future = _iso(datetime.now(timezone.utc) + timedelta(hours=1)).replace("+", "%2B")
    status, later = await _get(http, query, f"/v1/quarantine?since={future}", admin)
    assert status == 200 and later["quarantined"] == 0 and later["reasons"] == [] and later["since"]
    status, since_2000 = await _get(http, query, "/v1/quarantine?since=2000-01-01", admin)
    assert status == 200 and since_2000["reasons"] == listing["reasons"]
    # Only what came from `since` on: the second delivery alone.
    status, recent = await _get(http, query, f"/v1/quarantine?since={no_name['last_seen']}", admin)
    assert status == 200 and recent["quarantined"] == 1
    assert [(r["field"], r["count"], r["first_seen"]) for r in recent["reasons"]] == [
        ("event", 1, no_name["last_seen"])
    ]


async def test_numbers_in_a_reason_make_one_kind_not_one_per_event(http, query, stores, project, admin):  # type: ignore[no-untyped-def]
    now = _now()
    rows = [
        _row(
            project.id,
            now - timedelta(seconds=i),
            f"size-{i}",
            0,
            {"type": "track", "messageId": f"big-{i}"},
            [{"field": "(event)", "reason": f"{40000 + i} bytes, over the 32768-byte event limit"}],
        )
        for i in range(4)
    ]
    await _insert_quarantine(stores, rows)
    status, listing = await _get(http, query, "/v1/quarantine", admin)
    assert status == 200, listing
    [kind] = listing["reasons"]
    assert (kind["field"], kind["reason"], kind["count"]) == ("(event)", "N bytes, over the N-byte event limit", 4)
    assert len(kind["samples"]) == 3  # at most three, the newest
    assert [s["message_id"] for s in kind["samples"]] == ["big-0", "big-1", "big-2"]
    assert (
        kind["samples"][0]["errors"][0]["reason"] == "40000 bytes, over the 32768-byte event limit"
    )  # exact text kept


# --------------------------------------------------------------------------------------------------------
# /v1/stats
# --------------------------------------------------------------------------------------------------------


async def test_stats_count_a_resent_bad_event_once(http, collector, query, stores, project):  # type: ignore[no-untyped-def]
    bad = {"type": "track", "userId": "s-1", "messageId": "s-bad"}
    for batch in (
        [{"type": "track", "userId": "s-1", "event": "Ok"}, bad, {"type": "track", "userId": "s-2"}],
        [{"type": "track", "userId": "s-1", "event": "Ok again"}, bad],
    ):
        status, body, _ = await _post(http, collector, "/v1/batch", {"batch": batch}, project.write_key)
        assert status == 200 and body["accepted"] == 1, body
    await wait_drained(collector)
    assert await stored_rows(stores, project.id, "quarantine") == 3
    status, stats = await _get(http, query, "/v1/stats", project.read_key)
    assert status == 200 and stats["quarantined"] == 2, stats  # s-bad once; the id-less one is its own event


# --------------------------------------------------------------------------------------------------------
# replay: POST /v1/quarantine/replay (collector, admin key)
# --------------------------------------------------------------------------------------------------------


def _replay_rows(project_id: str, user: str, now: datetime) -> tuple[list[bytes], dict[str, Any]]:
    """Quarantine rows of a former, stricter collector: an event valid today (and a resent copy), an
    id-less page valid today, one still invalid, and one quarantined cut short (never replayable)."""
    first = now - timedelta(minutes=10)
    device = first - timedelta(hours=2)  # the device clock was 2 h behind; it stamped the event 10 s before sending
    valid = {
        "type": "track",
        "userId": user,
        "anonymousId": f"{user}-anon",
        "event": "Replayed",
        "messageId": f"{user}-m1",
        "timestamp": _iso(device - timedelta(seconds=10)),
        "sentAt": _iso(device),
    }
    page = {
        "type": "page",
        "anonymousId": f"{user}-anon",
        "name": "Home",
        "timestamp": _iso(first - timedelta(minutes=1)),
    }
    invalid = {"type": "track", "userId": user, "messageId": f"{user}-bad"}
    cut = {
        "type": "track",
        "userId": user,
        "event": "Deep",
        "messageId": f"{user}-cut",
        "properties": {"p": "(nested too deep: cut here)"},
    }
    older_rule = [{"field": "anonymousId", "reason": "an older rule, since relaxed"}]
    rows = [
        _row(project_id, first, f"{user}-req-1", 0, valid, older_rule),
        _row(project_id, first + timedelta(minutes=1), f"{user}-req-2", 3, valid, older_rule),  # resent
        _row(project_id, first + timedelta(minutes=2), f"{user}-req-3", 1, page, older_rule),
        _row(project_id, first + timedelta(minutes=3), f"{user}-req-4", 0, invalid, NO_NAME),
        _row(
            project_id,
            first + timedelta(minutes=4),
            f"{user}-req-5",
            2,
            cut,
            [{"field": "(event)", "reason": "nested deeper than 254 levels"}],
        ),
    ]
    return rows, {"first": first, "valid": valid, "page": page, "invalid": invalid}


async def test_replay_takes_in_what_passes_today_exactly_once(http, collector, query, stores, project, admin):  # type: ignore[no-untyped-def]
    rows, case = _replay_rows(project.id, "rp", _now())
    await _insert_quarantine(stores, rows)

    # Admin only; the collector's ingest keys cannot.
    assert (await _post(http, collector, "/v1/quarantine/replay", {}))[0] == 401
    for key in (project.write_key, project.read_key):
        status, body, _ = await _post(http, collector, "/v1/quarantine/replay", {}, key)
        assert status == 403 and body["errors"][0]["field"] == "Authorization", body
    for bad, field in (({"since": "soon"}, "since"), ({"since": 5}, "since"), (b"[1]", "body"), (b"{no", "body")):
        status, body, _ = await _post(http, collector, "/v1/quarantine/replay", bad, admin)
        assert status == 400 and body["errors"][0]["field"] == field, (bad, body)
    assert await stored_rows(stores, project.id) == 0  # nothing replayed by a refused request

    status, report, _ = await _post(http, collector, "/v1/quarantine/replay", {}, admin)
    assert status == 200, report
    assert report["replayed"] == 2 and report["removed_rows"] == 3, report  # the valid event (2 copies) and the page
    assert report["still_failing"] == 2
    assert {(f["field"], f["reason"], f["count"]) for f in report["failing"]} == {
        ("event", "Field required", 1),
        ("(event)", "kept only in part when quarantined (nested too deep): cannot be replayed", 1),
    }
    await wait_drained(collector)

    # Stored once, through the durable path: the identity link of the replayed event stitched the page's
    # anonymous id to the user.
    status, body = await _get(http, query, "/v1/customers/rp/events", project.read_key)
    assert status == 200, body
    assert sorted(body["ids"]) == ["rp", "rp-anon"]
    events = {e["message_id"]: e for e in body["events"]}
    page_id = replay_message_id(project.id, "rp-req-3", 1)
    assert sorted(events) == sorted(["rp-m1", page_id]) and body["count"] == 2
    replayed = events["rp-m1"]
    first = case["first"]
    # The first delivery's receive time, so the skew correction gives what it would have then: 10 s before.
    assert replayed["received_at"] == _iso(first)
    assert replayed["timestamp"] == _iso(first - timedelta(seconds=10))
    assert events[page_id]["timestamp"] == case["page"]["timestamp"]  # no sentAt: the client's own time
    assert await stored_rows(stores, project.id) == 2

    # A second replay finds nothing to replay; the invalid ones stay where they are.
    status, again, _ = await _post(http, collector, "/v1/quarantine/replay", {}, admin)
    assert status == 200 and (again["replayed"], again["removed_rows"], again["still_failing"]) == (0, 0, 2), again
    status, listing = await _get(http, query, "/v1/quarantine", admin)
    assert status == 200 and listing["quarantined"] == 2
    assert {s["message_id"] for r in listing["reasons"] for s in r["samples"]} == {"rp-bad", "rp-cut"}
    status, stats = await _get(http, query, "/v1/stats", project.read_key)
    assert stats["quarantined"] == 2 and stats["events"] == 2
    await wait_drained(collector)
    assert await stored_rows(stores, project.id) == 2


async def test_a_quarantined_event_keeps_what_it_inherited_from_its_batch(http, collector, stores, project):  # type: ignore[no-untyped-def]
    """Segment's Python client puts ``sentAt`` (and a library may put ``context``) on the batch, not the
    event: the quarantined raw event carries them, so a replay corrects the clock as the first delivery would."""
    sent_at = "2026-01-01T12:00:00.000+00:00"
    batch = {
        "batch": [
            {"type": "track", "userId": "ok", "event": "Fine"},
            {
                "type": "track",
                "userId": "q",
                "messageId": "inherits",
                "timestamp": "2026-01-01T11:59:50.000Z",
                "context": {"ip": "1"},
            },
        ],
        "sentAt": sent_at,
        "context": {"library": {"name": "analytics-python"}, "ip": "0"},
    }
    status, body, _ = await _post(http, collector, "/v1/batch", batch, project.write_key)
    assert status == 200 and body["quarantined"][0]["index"] == 1, body
    await wait_stored(stores, project.id, 1, table="quarantine")
    _, rows = await stores.clickhouse.query(
        "SELECT raw FROM quarantine WHERE project_id = {p:String} AND message_id = 'inherits'", {"p": project.id}
    )
    raw = json.loads(rows[0][0])
    assert raw["sentAt"] == sent_at
    assert raw["context"] == {"library": {"name": "analytics-python"}, "ip": "1"}  # the event's own wins
    assert "event" not in raw  # still the event as sent otherwise
    # A batch sentAt no datetime can hold (found by the fuzz tests: a 500) is simply not carried over.
    odd = {
        "batch": [{"type": "track", "userId": "ok", "event": "Fine"}, {"type": "track", "userId": "q"}],
        "sentAt": "0001-01-01T00:00:00+14:00",
    }
    status, body, _ = await _post(http, collector, "/v1/batch", odd, project.write_key)
    assert status in (200, 400), body


async def test_replay_since_leaves_older_events_alone(http, collector, query, stores, project, admin):  # type: ignore[no-untyped-def]
    now = _now()
    event = {"type": "track", "userId": "since-u", "event": "E"}
    await _insert_quarantine(
        stores,
        [
            _row(project.id, now - timedelta(days=2), "since-old", 0, {**event, "messageId": "old"}, NO_NAME),
            _row(project.id, now - timedelta(hours=1), "since-new", 0, {**event, "messageId": "new"}, NO_NAME),
        ],
    )
    status, report, _ = await _post(
        http, collector, "/v1/quarantine/replay", {"since": _iso(now - timedelta(days=1))}, admin
    )
    assert status == 200 and (report["replayed"], report["removed_rows"]) == (1, 1), report
    await wait_drained(collector)
    status, body = await _get(http, query, "/v1/customers/since-u/events", project.read_key)
    assert [e["message_id"] for e in body["events"]] == ["new"]
    status, listing = await _get(http, query, "/v1/quarantine", admin)
    assert listing["quarantined"] == 1 and listing["reasons"][0]["samples"][0]["message_id"] == "old"


async def test_replay_pages_through_the_quarantine_taking_copies_in_other_pages_once(  # type: ignore[no-untyped-def]
    http, collector, query, stores, project
):
    from collector.appkeys import SPOOL
    from collector.accept import Limits
    from collector.quarantine import replay

    now = _now()
    track = {"type": "track", "userId": "pg-u", "event": "Paged"}
    raws = [
        {**track, "messageId": "pg-a"},
        track,
        {**track, "messageId": "pg-b"},
        {"type": "track", "userId": "pg-u", "messageId": "pg-bad"},
        track,
        {**track, "messageId": "pg-a"},
        {"type": "track", "userId": "pg-u", "messageId": "pg-bad"},
    ]
    await _insert_quarantine(
        stores,
        [
            _row(project.id, now - timedelta(minutes=10 - i), f"pg-req-{i}", i, raw, NO_NAME)
            for i, raw in enumerate(raws)
        ],
    )
    spool = collector.app[SPOOL]
    appended: list[list[bytes]] = []

    async def append(records: list[bytes]) -> None:
        appended.append(records)
        await spool.append(*records)

    async def run():  # type: ignore[no-untyped-def]
        return await replay(
            stores.clickhouse,
            project.id,
            append,
            limits=Limits(max_event_bytes=32768, max_future_ms=86_400_000),
            page_rows=2,
            record_bytes=100,
        )  # pages of 2 rows; one event per spool record

    report = await run()
    assert (report.replayed, report.removed_rows, report.still_failing) == (4, 5, 1), report
    assert len(appended) == 4 and all(len(records) == 1 for records in appended)
    await wait_drained(collector)
    status, body = await _get(http, query, "/v1/customers/pg-u/events", project.read_key)
    assert sorted(e["message_id"] for e in body["events"]) == sorted(
        ["pg-a", "pg-b", replay_message_id(project.id, "pg-req-1", 1), replay_message_id(project.id, "pg-req-4", 4)]
    )
    assert await stored_rows(stores, project.id) == 4
    again = await run()
    assert (again.replayed, again.removed_rows, again.still_failing) == (0, 0, 1) and len(appended) == 4
    assert await stored_rows(stores, project.id, "quarantine") == 2  # the invalid event's two copies stay


# --------------------------------------------------------------------------------------------------------
# replay: the CLI
# --------------------------------------------------------------------------------------------------------


async def test_cli_replays_through_the_running_collector_with_a_one_time_key(  # type: ignore[no-untyped-def]
    http, collector, query, stores, project, data_dir
):
    """This test process holds the embedded ClickHouse, as a running `journeys up` does: the CLI must go
    through the collector, with an admin key it revokes afterwards."""
    now = _now()
    await _insert_quarantine(
        stores,
        [
            _row(
                project.id,
                now - timedelta(minutes=5),
                "cli-req-1",
                0,
                {"type": "track", "userId": "cli-u", "event": "Back"},
                NO_NAME,
            ),
            _row(project.id, now - timedelta(minutes=4), "cli-req-2", 1, {"type": "track", "userId": "cli-u"}, NO_NAME),
        ],
    )
    env = {"JOURNEYS_COLLECTOR_HOST": "127.0.0.1", "JOURNEYS_COLLECTOR_PORT": str(collector.port)}
    done = await asyncio.to_thread(journeys, data_dir, "quarantine", "replay", "--project", project.id, **env)
    assert done.returncode == 0, done.stderr
    assert "replayed 1 (quarantine rows removed: 1)" in done.stdout, done.stdout
    assert "still failing 1" in done.stdout and "event: Field required" in done.stdout
    revoked = await stores.pg.fetch(
        "SELECT revoked_at FROM api_keys WHERE project_id = $1 AND kind = 'admin'", project.id
    )
    assert len(revoked) == 1 and revoked[0]["revoked_at"] is not None  # made for this replay, then revoked

    await wait_drained(collector)
    status, body = await _get(http, query, "/v1/customers/cli-u/events", project.read_key)
    assert [e["message_id"] for e in body["events"]] == [replay_message_id(project.id, "cli-req-1", 0)]

    again = await asyncio.to_thread(
        journeys, data_dir, "quarantine", "replay", "--project", project.id, "--json", **env
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {
        "replayed": 0,
        "removed_rows": 0,
        "still_failing": 1,
        "failing": [{"field": "event", "reason": "Field required", "count": 1}],
    }
    bad = await asyncio.to_thread(
        journeys, data_dir, "quarantine", "replay", "--project", project.id, "--since", "soon", **env
    )
    assert bad.returncode == 2 and "--since must be an ISO-8601" in bad.stderr


_CHDB = """
import asyncio, json, sys
from journeys.clickhouse import ClickHouse

async def main():
    ch = await ClickHouse.connect(sys.argv[1])
    try:
        if sys.argv[2] == "insert":
            from journeys.events import QUARANTINE_COLUMNS
            await ch.insert_lines("quarantine", QUARANTINE_COLUMNS, sys.stdin.buffer.read())
        else:
            _, rows = await ch.query(sys.stdin.read())
            print(json.dumps(rows, default=str))
    finally:
        await ch.close()

asyncio.run(main())
"""


def _chdb(data_dir: Path, action: str, stdin: bytes) -> str:
    """Another process on a chDB data directory (a process hosts one: this test process has its own)."""
    done = subprocess.run(
        [sys.executable, "-c", _CHDB, f"chdb://{data_dir.resolve()}/clickhouse", action],
        input=stdin,
        env=cli_env(data_dir),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


@pytest.mark.slow
def test_cli_replays_directly_when_the_service_is_stopped(tmp_path: Path) -> None:
    try:
        created = journeys(tmp_path, "project", "create", "direct", "--json")
        assert created.returncode == 0, created.stderr
        project_id = json.loads(created.stdout)["id"]
        assert journeys(tmp_path, "migrate").returncode == 0
        now = _now()
        rows, case = _replay_rows(project_id, "dr", now)
        _chdb(tmp_path, "insert", b"".join(rows))

        done = journeys(tmp_path, "quarantine", "replay", "--project", "direct")
        assert done.returncode == 0, done.stderr
        assert "replayed 2 (quarantine rows removed: 3)" in done.stdout and "still failing 2" in done.stdout, (
            done.stdout
        )
        again = journeys(tmp_path, "quarantine", "replay", "--project", "direct", "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["replayed"] == 0

        # In ClickHouse once each (the CLI waited for its own inserter), identity link applied, no key made.
        stored = json.loads(
            _chdb(
                tmp_path,
                "query",
                (
                    f"SELECT message_id, count(), toUnixTimestamp64Milli(any(received_at)) FROM events "
                    f"WHERE project_id = '{project_id}' GROUP BY message_id ORDER BY message_id"
                ).encode(),
            )
        )
        page_id = replay_message_id(project_id, "dr-req-3", 1)
        assert sorted(r[0] for r in stored) == sorted(["dr-m1", page_id]) and all(r[1] == 1 for r in stored), stored
        assert {r[0]: r[2] for r in stored}["dr-m1"] == int(case["first"].timestamp() * 1000)
        linked = json.loads(
            _chdb(
                tmp_path,
                "query",
                (
                    f"SELECT distinct_id, argMax(customer_id, version) FROM identities WHERE project_id = '{project_id}' "
                    "GROUP BY distinct_id"
                ).encode(),
            )
        )
        assert ["dr-anon", "dr"] in linked, linked
        quarantined = json.loads(
            _chdb(
                tmp_path,
                "query",
                (f"SELECT message_id FROM quarantine WHERE project_id = '{project_id}' ORDER BY message_id").encode(),
            )
        )
        assert quarantined == [["dr-bad"], ["dr-cut"]]
    finally:
        stop_leftover_postgres(tmp_path)


# --------------------------------------------------------------------------------------------------------
# the log line: one WARNING per (project, field, reason) per minute
# --------------------------------------------------------------------------------------------------------


def test_log_line_at_most_once_a_minute_per_kind_with_a_count_of_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    logger = logging.getLogger("journeys.test.quarantine")
    limiter = QuarantineLog(60, clock=lambda: now[0], logger=logger)
    caplog.set_level(logging.INFO, logger=logger.name)

    # LogRecords; Any, for the `extra` fields (project_id, field, reason, suppressed) they carry as attributes
    def lines() -> list[Any]:
        return [r for r in caplog.records if r.name == logger.name]

    for i in range(5):
        limiter.note("p1", [{"field": "event", "reason": "Field required"}])
        limiter.note("p1", [{"field": "(event)", "reason": f"{40000 + i} bytes, over the 32768-byte event limit"}])
    limiter.note("p2", [{"field": "event", "reason": "Field required"}])
    assert [(r.levelno, r.project_id, r.field, r.reason, r.suppressed) for r in lines()] == [
        (logging.WARNING, "p1", "event", "Field required", 0),
        (logging.WARNING, "p1", "(event)", "N bytes, over the N-byte event limit", 0),
        (logging.WARNING, "p2", "event", "Field required", 0),
    ]
    assert "journeys quarantine replay --project p1" in lines()[0].getMessage()
    now[0] += 59
    limiter.note("p1", [{"field": "event", "reason": "Field required"}])
    assert len(lines()) == 3
    now[0] += 2  # a minute after the first line
    limiter.note("p1", [{"field": "event", "reason": "Field required"}])
    assert len(lines()) == 4
    assert lines()[-1].suppressed == 5 and "and 5 more like it" in lines()[-1].getMessage()


async def test_the_collector_logs_quarantined_events_rate_limited(http, collector, project, caplog):  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="collector.quarantine")
    batch = [
        {"type": "track", "userId": "l-1", "event": "Ok"},
        {"type": "track", "userId": "l-1"},
        {"type": "track", "userId": "l-2"},
        {"type": "track", "userId": "l-3", "event": "E", "sentiment": "meh"},
    ]
    for _ in range(3):
        status, body, _ = await _post(http, collector, "/v1/batch", {"batch": batch}, project.write_key)
        assert status == 200 and len(body["quarantined"]) == 3
    ours = [
        r for r in caplog.records if r.name == "collector.quarantine" and getattr(r, "project_id", None) == project.id
    ]
    assert sorted((r.levelname, r.field, r.reason) for r in ours) == [
        ("WARNING", "event", "Field required"),
        ("WARNING", "sentiment", "must be one of positive, neutral, negative"),
    ]
    assert all(project.write_key not in r.getMessage() for r in caplog.records)
