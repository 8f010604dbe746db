"""Bulk import over real HTTP: ``POST /v1/import`` on a collector on 127.0.0.1, and the ``journeys import``
CLI as a subprocess against it, with every count taken from the real chDB.

Counts "as reads see them" come from query.reads.project_stats (uniqExact(message_id): what every read
does with LIMIT 1 BY); raw row counts (duplicates included) from support.stored_rows.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer

from collector.appkeys import INSERTER, METRICS, SPOOL
from collector.app import create_app as create_collector
from collector.imports import derive_message_id
from collector.inserter import Inserter
from journeys.keys import add_key
from journeys.metrics import Metrics
from collector.origins import change_origins
from query.reads import project_stats
from testkit.service import cli_env
from support import basic, stored_rows, wait_drained, wait_until, with_settings

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def _ndjson(*events: Any) -> bytes:
    return b"".join((e if isinstance(e, bytes) else orjson.dumps(e)) + b"\n" for e in events)


async def _import(http, server, body: Any, key: str | None, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    async with http.post(
        server.make_url("/v1/import"),
        data=body,
        headers={"Content-Type": "application/x-ndjson", **(basic(key) if key else {}), **(headers or {})},
    ) as resp:
        return resp.status, await resp.json(), resp.headers


async def _events(stores, project_id: str) -> int:  # type: ignore[no-untyped-def]
    """Events as every read counts them: each messageId once."""
    return (await project_stats(stores.clickhouse, project_id))["events"]


async def _rows(stores, project_id: str) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    columns, rows = await stores.clickhouse.query(
        "SELECT * FROM events WHERE project_id = {p:String} ORDER BY timestamp LIMIT 1 BY message_id",
        {"p": project_id},
    )
    return {r[columns.index("message_id")]: dict(zip(columns, r)) for r in rows}


@asynccontextmanager
async def _collector(stores, **settings: Any) -> AsyncIterator[TestServer]:  # type: ignore[no-untyped-def]
    server = TestServer(create_collector(with_settings(stores, **settings), Metrics()), host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


def _track(n: int, **fields: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": f"c-{n % 7}",
        "event": "Store Purchase",
        "channel": "store",
        "timestamp": _iso(NOW - timedelta(days=400, minutes=n)),
        "properties": {"n": n, "total": round(n * 1.5, 2)},
        **fields,
    }


# -- the route ---------------------------------------------------------------------------------------------


async def test_good_lines_are_stored_and_bad_ones_reported_by_line_number(http, collector, stores, project):  # type: ignore[no-untyped-def]
    long_ago = NOW - timedelta(days=3 * 365)
    body = _ndjson(
        _track(1, messageId="given-1"),  # line 1
        _track(2, sentAt=_iso(NOW)),  # line 2: sentAt ignored, the timestamp kept as sent
        b"{not json",  # line 3
        b"",  # line 4: blank, still numbered
        b"[1, 2]",  # line 5
        {**_track(6), "timestamp": None},  # line 6: imports need a time
        _track(7, timestamp="1999-12-31T23:59:59Z"),  # line 7: absurd
        _track(8, timestamp=_iso(NOW + timedelta(days=30))),  # line 8: absurd
        {k: v for k, v in _track(9).items() if k != "event"},  # line 9: a track without event
        _track(10, timestamp=_iso(long_ago), writeKey="jw_must_not_be_stored"),  # line 10
        {"type": "identify", "userId": "c-1", "traits": {"tier": "gold"}, "timestamp": _iso(long_ago)},  # line 11
    )
    status, report, _ = await _import(http, collector, body, project.write_key)
    assert status == 200, report
    assert (report["lines"], report["accepted"], report["rejected"]) == (11, 4, 6), report
    assert report["last_durable_line"] == 11 and report["success"] is True
    assert report["errors_total"] == 6 and report["errors_truncated"] is False
    by_line = {e["line"]: e for e in report["errors"]}
    assert sorted(by_line) == [3, 5, 6, 7, 8, 9]
    assert by_line[3]["field"] == "(line)" and "invalid JSON" in by_line[3]["reason"]
    assert by_line[5]["reason"] == "must be a JSON object: one event per line"
    assert by_line[6]["field"] == "timestamp" and "required for imports" in by_line[6]["reason"]
    # Historical is fine, absurd is not: before 2000, or past the clock-skew allowance (a day).
    assert by_line[7]["field"] == "timestamp" and "out of range" in by_line[7]["reason"]
    assert by_line[8]["field"] == "timestamp" and "out of range" in by_line[8]["reason"]
    assert by_line[9]["field"] == "event"

    await wait_drained(collector)
    assert await _events(stores, project.id) == 4
    rows = await _rows(stores, project.id)
    assert rows["given-1"]["event"] == "Store Purchase"
    # No messageId: a deterministic one, from the project and the event's canonical JSON.
    derived = derive_message_id(project.id, {k: v for k, v in _track(2).items()})
    assert derived in rows
    # Original timestamps are kept even with a sentAt from "now" (no clock-skew correction).
    stored = rows[derived]["timestamp"].replace(tzinfo=timezone.utc)
    assert stored == datetime.fromisoformat(_track(2)["timestamp"].replace("Z", "+00:00"))
    assert rows[derived]["sent_at"] is None
    assert not any("jw_must_not_be_stored" in json.dumps(r, default=str) for r in rows.values())
    assert await stored_rows(stores, project.id, "quarantine") == 0  # reported, not quarantined


async def test_an_unreadable_timestamp_is_named(http, collector, project):  # type: ignore[no-untyped-def]
    body = _ndjson(_track(1), _track(2, timestamp="2024-13-45"), _track(3, timestamp=1709285400))
    status, report, _ = await _import(http, collector, body, project.write_key)
    assert status == 200 and report["accepted"] == 1
    assert [(e["line"], e["field"]) for e in report["errors"]] == [(2, "timestamp"), (3, "timestamp")]
    assert "ISO-8601" in report["errors"][0]["reason"]


async def test_gzip_import_and_reimport_counts_each_event_once(http, collector, stores, project):  # type: ignore[no-untyped-def]
    events = [_track(n) for n in range(3000)]
    # Two gzip members back to back (`cat a.gz b.gz`) are one valid stream.
    body = gzip.compress(_ndjson(*events[:1000])) + gzip.compress(_ndjson(*events[1000:]))
    for attempt in range(2):
        status, report, _ = await _import(http, collector, body, project.write_key, {"Content-Encoding": "gzip"})
        assert status == 200, report
        assert (report["lines"], report["accepted"], report["rejected"]) == (3000, 3000, 0)
        await wait_drained(collector)
        assert await _events(stores, project.id) == 3000, attempt
    # Both copies went in (merges may fold them later); every read counts one.
    assert 3000 <= await stored_rows(stores, project.id) <= 6000
    # Key order and spacing do not change the derived id: the same event re-exported by another tool.
    reordered = b"\n".join(
        orjson.dumps(dict(reversed(list(e.items()))), option=orjson.OPT_INDENT_2).replace(b"\n", b" ")
        for e in events[:50]
    )
    status, report, _ = await _import(http, collector, reordered, project.write_key)
    assert (status, report["accepted"]) == (200, 50)
    await wait_drained(collector)
    assert await _events(stores, project.id) == 3000


async def test_first_line_header_numbers_a_resumed_upload(http, collector, project):  # type: ignore[no-untyped-def]
    body = _ndjson(_track(1), b"nope", _track(3))
    status, report, _ = await _import(http, collector, body, project.write_key, {"X-Import-First-Line": "501"})
    assert status == 200
    assert (report["first_line"], report["last_durable_line"]) == (501, 503)
    assert [e["line"] for e in report["errors"]] == [502]


@pytest.mark.parametrize(
    "headers,body,status,field",
    [
        ({"Content-Encoding": "br"}, b"{}", 415, "Content-Encoding"),
        ({"X-Import-First-Line": "0"}, b"{}", 400, "X-Import-First-Line"),
        ({"X-Import-First-Line": "²"}, b"{}", 400, "X-Import-First-Line"),
        ({}, b"", 400, "body"),
        ({}, b"\n \n\n", 400, "body"),
        ({"Content-Encoding": "gzip"}, b"definitely not gzip", 400, "body"),
    ],
)
async def test_request_level_refusals_name_the_field(http, collector, project, headers, body, status, field):  # type: ignore[no-untyped-def]
    got, report, _ = await _import(http, collector, body, project.write_key, headers)
    assert got == status, report
    assert report["errors"][0]["field"] == field and report["errors"][0]["reason"]


async def test_only_write_keys_import(http, collector, stores, project):  # type: ignore[no-untyped-def]
    body = _ndjson(_track(1))
    async with stores.pg.acquire() as conn:
        public = await add_key(conn, project.id, "public")
        await change_origins(conn, project.id, add=["https://shop.test"])
    assert (await _import(http, collector, body, None))[0] == 401
    assert (await _import(http, collector, body, "jw_unknown"))[0] == 401
    status, report, _ = await _import(http, collector, body, project.read_key)
    assert status == 403 and "read key" in report["errors"][0]["reason"]
    # A public key, even from the project's own site: it sits in web pages, it must not rewrite history.
    status, report, _ = await _import(http, collector, body, public, {"Origin": "https://shop.test"})
    assert status == 403 and report["errors"][0]["reason"] == "imports need a write key, not a public key"
    assert await stored_rows(stores, project.id) == 0


async def test_all_lines_bad_is_a_400_listing_each_and_stores_nothing(http, collector, stores, project):  # type: ignore[no-untyped-def]
    body = _ndjson(*[{k: v for k, v in _track(n).items() if k != "userId"} for n in range(1500)])
    status, report, _ = await _import(http, collector, body, project.write_key)
    assert status == 400 and report["success"] is False
    assert (report["accepted"], report["rejected"], report["errors_total"]) == (0, 1500, 1500)
    assert len(report["errors"]) == 1000 and report["errors_truncated"] is True  # listed up to the cap
    assert report["errors"][0] == {"line": 1, "field": "userId", "reason": "userId or anonymousId is required"}
    assert await stored_rows(stores, project.id) == 0


async def test_truncated_gzip_keeps_what_came_before_and_says_where(http, collector, stores, project):  # type: ignore[no-untyped-def]
    whole = gzip.compress(_ndjson(*[_track(n) for n in range(20_000)]))
    status, report, _ = await _import(
        http, collector, whole[: len(whole) * 3 // 4], project.write_key, {"Content-Encoding": "gzip"}
    )
    assert status == 400
    assert report["errors"][0]["field"] == "body" and "truncated gzip" in report["errors"][0]["reason"]
    durable = report["last_durable_line"]
    assert 2000 <= durable < 20_000 and report["accepted"] == durable
    await wait_drained(collector)
    assert await _events(stores, project.id) == durable


async def test_size_and_line_limits(http, collector_stores, stores, project):  # type: ignore[no-untyped-def]
    async with _collector(
        collector_stores, max_request_bytes=4096, max_event_bytes=2048, max_import_bytes=60_000
    ) as server:
        huge = {**_track(2), "properties": {"blob": "x" * 10_000}}
        status, report, _ = await _import(http, server, _ndjson(_track(1), huge, _track(3)), project.write_key)
        assert status == 200 and report["accepted"] == 2
        [error] = report["errors"]
        assert error["line"] == 2 and error["field"] == "(line)" and "4096-byte line limit" in error["reason"]
        # Over the import cap mid-stream (chunked: no Content-Length to refuse up front): the lines read
        # before the cap are kept, and the answer says up to where.
        many = _ndjson(*[_track(n) for n in range(600)])
        assert len(many) > 60_000

        async def chunked():  # type: ignore[no-untyped-def]
            for i in range(0, len(many), 4096):
                yield many[i : i + 4096]

        status, report, _ = await _import(http, server, chunked(), project.write_key)
        assert status == 413 and report["errors"][0]["field"] == "body"
        assert 0 < report["last_durable_line"] < 600 and report["accepted"] == report["last_durable_line"]
        # A Content-Length over the cap is refused before anything is read.
        status, report, _ = await _import(http, server, many, project.write_key)
        assert (status, report["errors"][0]["field"]) == (413, "body")
        await wait_drained(server)


async def test_full_spool_is_waited_out_or_answered_503_with_the_resume_line(http, collector_stores, stores, project):  # type: ignore[no-untyped-def]
    events = [_track(n, properties={"n": n, "pad": "p" * 200}) for n in range(8000)]  # ~2.6 MB > the spool
    body = _ndjson(*events)
    async with _collector(collector_stores, spool_max_bytes=1024 * 1024, import_spool_wait_s=0.5) as server:
        inserter = server.app[INSERTER]
        await inserter.stop(drain_timeout=0)  # nothing leaves the spool: it fills
        status, report, headers = await _import(http, server, body, project.write_key)
        assert status == 503 and headers["Retry-After"], report
        durable = report["last_durable_line"]
        assert 0 < durable < 8000 and report["accepted"] == durable and report["lines"] == durable
        assert f"resend from line {durable + 1}" in report["errors"][0]["reason"]
        # Resume: the rest, numbered as in the file, while an inserter drains the spool behind it.
        async with _draining(server, stores):
            rest = _ndjson(*events[durable:])
            status, report, _ = await _import(
                http, server, rest, project.write_key, {"X-Import-First-Line": str(durable + 1)}
            )
            assert status == 200, report["errors"][:3]
            assert (report["first_line"], report["last_durable_line"], report["accepted"]) == (
                durable + 1,
                8000,
                8000 - durable,
            )
            await wait_drained(server)
    assert await _events(stores, project.id) == 8000


@asynccontextmanager
async def _draining(server, stores) -> AsyncIterator[None]:  # type: ignore[no-untyped-def]
    """A second inserter on the collector's spool, after the test stopped the collector's own (a stopped
    Inserter drains what is there and exits; these tests need one that keeps going)."""
    inserter = Inserter(server.app[SPOOL], stores.clickhouse, Metrics(), linger_s=0.005)
    inserter.start()
    try:
        yield
    finally:
        await inserter.stop()


async def test_a_briefly_full_spool_slows_an_import_down_instead_of_failing_it(http, collector_stores, stores, project):  # type: ignore[no-untyped-def]
    events = [_track(n, properties={"n": n, "pad": "p" * 200}) for n in range(8000)]
    async with _collector(collector_stores, spool_max_bytes=1024 * 1024, import_spool_wait_s=60) as server:
        inserter = server.app[INSERTER]
        await inserter.stop(drain_timeout=0)
        upload = asyncio.ensure_future(_import(http, server, _ndjson(*events), project.write_key))
        spool = server.app[SPOOL]
        await wait_until(lambda: _true(spool.pending_bytes > 512 * 1024))
        await asyncio.sleep(0.5)
        assert not upload.done()  # waiting for room, not failing
        async with _draining(server, stores):
            status, report, _ = await upload
            assert (status, report["accepted"]) == (200, 8000)
            await wait_drained(server)
    assert await _events(stores, project.id) == 8000


async def _true(value: bool) -> bool:
    return value


def test_derived_ids_are_uuid5_of_project_and_canonical_json() -> None:
    import uuid

    from collector.imports import MESSAGE_ID_NAMESPACE

    event = {"type": "track", "userId": "c-1", "event": "Sale", "properties": {"b": 1, "a": [2, {"y": 1, "x": 0}]}}
    canonical = orjson.dumps(event, option=orjson.OPT_SORT_KEYS).decode()
    expected = str(uuid.uuid5(MESSAGE_ID_NAMESPACE, f"p_1\n{canonical}"))
    assert derive_message_id("p_1", event) == expected
    shuffled = {"properties": {"a": [2, {"x": 0, "y": 1}], "b": 1}, "event": "Sale", "userId": "c-1", "type": "track"}
    assert derive_message_id("p_1", shuffled) == expected
    assert derive_message_id("p_2", event) != expected  # per project
    assert derive_message_id("p_1", {**event, "properties": {"b": 1.0, "a": [2, {"y": 1, "x": 0}]}}) != expected


# -- the CLI -----------------------------------------------------------------------------------------------


async def _cli(data_dir: Path, *args: str, timeout: float = 600) -> tuple[int, str, str]:
    """``journeys import …`` in a child process, without blocking this event loop (it serves the collector)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        "import",
        *args,
        env=cli_env(data_dir, JOURNEYS_LOG_LEVEL="WARNING"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None  # communicate() waited for the exit
    return proc.returncode, out.decode(), err.decode()


async def test_cli_csv_with_mapping_constants_numbers_and_bad_rows(collector, stores, project, tmp_path, settings):  # type: ignore[no-untyped-def]
    path = tmp_path / "sales.csv.gz"
    with gzip.open(path, "wt", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["customer_no", "sold_at", "store", "total", "items", "note", "internal"])
        out.writerow(["c-1", "2024-03-01T09:30:00Z", "0042", "129.90", "3", "multi\nline note", "x"])  # lines 2-3
        out.writerow(["c-2", "1709285400", "7", "5", "1", "", "x"])  # line 4: epoch seconds
        out.writerow(["c-3", "17/03/2024", "7", "5", "1", "", "x"])  # line 5: unreadable time
        out.writerow(["c-4", "1709285400123", "7", "-2.5e1", "1", "", "x"])  # line 6: epoch ms
        out.writerow(["c-5", "1709285400"])  # line 7: too few fields
        out.writerow(["", "1709285400", "7", "5", "1", "", "x"])  # line 8: no user id (the collector says so)
    code, out_text, err = await _cli(
        settings.data_dir,
        str(path),
        "--write-key",
        project.write_key,
        "--collector",
        str(collector.make_url("")),
        "--map",
        "userId=customer_no",
        "--map",
        "timestamp=sold_at",
        "--map",
        "event=:Store Purchase",
        "--map",
        "channel=:store",
        "--map",
        "properties.store_id=store",
        "--drop",
        "internal",
        "--json",
    )
    assert code == 1, err  # some rows were rejected
    summary = json.loads(out_text)
    assert (summary["rows"], summary["accepted"], summary["rejected"], summary["completed"]) == (6, 3, 3, True), summary
    assert [(e["line"], e["field"]) for e in summary["errors"]] == [(5, "timestamp"), (7, "(row)"), (8, "userId")]
    assert "unreadable timestamp '17/03/2024'" in summary["errors"][0]["reason"]
    await wait_drained(collector)
    rows = {r["user_id"]: r for r in (await _rows(stores, project.id)).values()}
    assert sorted(rows) == ["c-1", "c-2", "c-4"]
    first = rows["c-1"]
    assert (first["event"], first["channel"], first["type"]) == ("Store Purchase", "store", "track")
    assert json.loads(first["properties"]) == {
        "store_id": "0042",
        "total": 129.9,
        "items": 3,
        "note": "multi\nline note",
    }
    assert first["timestamp"].replace(tzinfo=timezone.utc) == datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)
    assert rows["c-4"]["timestamp"].replace(tzinfo=timezone.utc) == datetime(
        2024, 3, 1, 9, 30, 0, 123000, tzinfo=timezone.utc
    )
    assert json.loads(rows["c-4"]["properties"])["total"] == -25.0

    # Human output: the summary, then the bad rows by line of the original file.
    code, human, _ = await _cli(
        settings.data_dir,
        str(path),
        "--write-key",
        project.write_key,
        "--collector",
        str(collector.make_url("")),
        "--map",
        "userId=customer_no",
        "--map",
        "timestamp=sold_at",
        "--map",
        "event=:Store Purchase",
        "--no-progress",
    )
    assert code == 1 and "6 rows read, 3 accepted, 3 rejected" in human
    assert (
        "  line 5: timestamp: unreadable timestamp" in human
        and "  line 7: (row): 2 fields where the header has 7" in human
    )


async def test_cli_ndjson_refuses_bad_options_and_a_dead_collector_clearly(project, tmp_path, settings):  # type: ignore[no-untyped-def]
    path = tmp_path / "events.ndjson"
    path.write_bytes(_ndjson(_track(1)))
    code, _, err = await _cli(settings.data_dir, str(path), "--write-key", "jw_x", "--map", "bogus=col")
    assert code == 2 and "unknown field" in err
    code, _, err = await _cli(settings.data_dir, str(tmp_path / "x.txt"), "--write-key", "jw_x")
    assert code == 2 and "--format" in err
    code, _, err = await _cli(
        settings.data_dir,
        str(path),
        "--write-key",
        "jw_x",
        "--collector",
        "http://127.0.0.1:9",
        "--retry-for",
        "1",
        "--no-progress",
    )
    assert code == 1 and "cannot reach" in err and "resume with --start-line 1" in err
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(gzip.compress(b"userId,event,timestamp\n" + b"c-1,Sale,2024-03-01\n" * 5000)[:200])
    code, _, err = await _cli(settings.data_dir, str(broken), "--write-key", "jw_x", "--no-progress")
    assert code == 1 and "cannot read the file" in err


async def test_cli_ndjson_with_project_name_and_unknown_key(collector, stores, project, tmp_path, settings):  # type: ignore[no-untyped-def]
    path = tmp_path / "events.jsonl"
    path.write_bytes(_ndjson(_track(1), b"", b"{broken", _track(4)))
    url = str(collector.make_url(""))
    code, out_text, err = await _cli(
        settings.data_dir, str(path), "--project", project.name, "--collector", url, "--json"
    )
    assert code == 1, err
    summary = json.loads(out_text)
    assert (summary["rows"], summary["accepted"], summary["rejected"]) == (3, 2, 1)
    assert summary["errors"][0]["line"] == 3
    # --project made a write key for the import and revoked it after.
    async with stores.pg.acquire() as conn:
        keys = await conn.fetch("SELECT revoked_at FROM api_keys WHERE project_id = $1 AND kind = 'write'", project.id)
    assert sorted(k["revoked_at"] is None for k in keys) == [False, True]  # the project's own key stays
    code, _, err = await _cli(
        settings.data_dir, str(path), "--write-key", "jw_nope", "--collector", url, "--no-progress"
    )
    assert code == 1 and "401" in err and "unknown or revoked key" in err


async def test_cli_mapped_ndjson_gz_and_start_line(collector, stores, project, tmp_path, settings):  # type: ignore[no-untyped-def]
    path = tmp_path / "export.ndjson.gz"
    flat = [
        {"customer": "c-1", "at": 1709285400, "amount": 12.5, "store": "s-1"},  # line 1
        {"customer": "c-2", "at": "2024-03-01T10:00:00+01:00", "amount": 3, "user_id": "ignored?"},  # line 2
        {"customer": "c-3", "at": "yesterday", "amount": 1},  # line 3
        {"customer": "c-4", "at": 1709285400000, "type": "identify", "tier": "gold"},  # line 4
    ]
    path.write_bytes(gzip.compress(_ndjson(*flat)))
    base = (
        "--write-key",
        project.write_key,
        "--collector",
        str(collector.make_url("")),
        "--json",
        "--map",
        "userId=customer",
        "--map",
        "timestamp=at",
        "--map",
        "event=:Order",
        "--drop",
        "user_id",
    )
    code, out_text, err = await _cli(settings.data_dir, str(path), *base)
    summary = json.loads(out_text)
    assert code == 1 and (summary["rows"], summary["accepted"], summary["rejected"]) == (4, 3, 1), err
    assert summary["errors"][0]["line"] == 3 and "unreadable timestamp 'yesterday'" in summary["errors"][0]["reason"]
    await wait_drained(collector)
    rows = {r["user_id"]: r for r in (await _rows(stores, project.id)).values()}
    assert json.loads(rows["c-1"]["properties"]) == {"amount": 12.5, "store": "s-1"}
    assert rows["c-2"]["timestamp"].replace(tzinfo=timezone.utc) == datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)
    assert rows["c-4"]["type"] == "identify" and json.loads(rows["c-4"]["traits"]) == {"tier": "gold"}
    # Resuming from a line: only the rest is read; the events already in stay counted once.
    code, out_text, _ = await _cli(settings.data_dir, str(path), *base, "--start-line", "4")
    assert code == 0 and json.loads(out_text)["rows"] == 1
    await wait_drained(collector)
    assert await _events(stores, project.id) == 3


@pytest.mark.slow
async def test_cli_waits_out_a_full_spool_and_resumes_from_the_last_durable_line(  # type: ignore[no-untyped-def]
    collector_stores, stores, project, tmp_path, settings
):
    path = tmp_path / "padded.csv"
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["customer", "at", "pad"])
        for i in range(6000):  # ~2 MB of events against a 1 MB spool that nothing drains at first
            out.writerow(["" if i == 5000 else f"c-{i}", 1709285400 + i, "p" * 250])
    async with _collector(collector_stores, spool_max_bytes=1024 * 1024, import_spool_wait_s=0.3) as server:
        await server.app[INSERTER].stop(drain_timeout=0)
        cli = asyncio.ensure_future(
            _cli(
                settings.data_dir,
                str(path),
                "--write-key",
                project.write_key,
                "--collector",
                str(server.make_url("")),
                "--map",
                "userId=customer",
                "--map",
                "timestamp=at",
                "--map",
                "event=:Visit",
                "--json",
            )
        )
        spool = server.app[SPOOL]
        await wait_until(lambda: _true(spool.pending_bytes > 768 * 1024))
        await asyncio.sleep(1.0)  # long enough for the collector to give up on this attempt (503)
        assert not cli.done()
        async with _draining(server, stores):
            code, out_text, err = await cli
            await wait_drained(server)
        refused = server.app[METRICS].registry.get_sample_value("journeys_spool_full_rejections_total")
        assert refused and refused >= 1  # the collector did answer 503 at least once
    summary = json.loads(out_text)
    assert code == 1 and summary["completed"], err
    assert (summary["rows"], summary["accepted"], summary["rejected"]) == (6000, 5999, 1)
    # The collector numbered the resent part from where it resumed; the CLI still names the file's line.
    assert [(e["line"], e["field"]) for e in summary["errors"]] == [(5002, "userId")]
    assert await _events(stores, project.id) == 5999


ROWS = int(os.environ.get("IMPORT_ROWS", "1000000"))


@pytest.mark.slow
async def test_cli_imports_a_million_row_csv_once_even_when_imported_twice(  # type: ignore[no-untyped-def]
    collector, stores, project, tmp_path, settings
):
    """1 M rows through `journeys import` (a subprocess, --project: a temporary write key) into the collector
    on a port, counted in ClickHouse; imported again, still counted once. Prints the throughput."""
    path = tmp_path / "million.csv"
    base = int(datetime(2021, 1, 1, tzinfo=timezone.utc).timestamp())
    began = time.monotonic()
    with open(path, "w", newline="") as fh:
        fh.write("customer_no,sold_at,store,total,items\n")
        fh.writelines(
            f"c{i % 50_000},{base + i * 61},s{i % 40:03d},{i % 9973 / 10:.2f},{i % 7 + 1}\n" for i in range(ROWS)
        )
    print(f"\nwrote {ROWS:,} rows ({path.stat().st_size / 1e6:.0f} MB) in {time.monotonic() - began:.1f} s")
    args = (
        str(path),
        "--project",
        project.name,
        "--collector",
        str(collector.make_url("")),
        "--map",
        "userId=customer_no",
        "--map",
        "timestamp=sold_at",
        "--map",
        "event=:Store Purchase",
        "--map",
        "channel=:store",
        "--json",
    )
    for attempt in ("first", "again"):
        began = time.monotonic()
        code, out_text, err = await _cli(settings.data_dir, *args)
        acknowledged = time.monotonic() - began
        assert code == 0, err[-3000:]
        summary = json.loads(out_text)
        assert (summary["rows"], summary["accepted"], summary["rejected"]) == (ROWS, ROWS, 0)
        await wait_drained(collector)
        stored = time.monotonic() - began
        assert await _events(stores, project.id) == ROWS
        print(
            f"{attempt}: {ROWS:,} rows acknowledged in {acknowledged:.1f} s ({ROWS / acknowledged:,.0f} rows/s, "
            f"CLI's own figure {summary['rows_per_second']:,} rows/s); all in ClickHouse after {stored:.1f} s "
            f"({ROWS / stored:,.0f} rows/s)"
        )
    assert await stored_rows(stores, project.id) >= ROWS


async def test_cli_rows_that_all_fail_alike_are_one_problem_with_the_likely_fix(collector, project, tmp_path, settings):  # type: ignore[no-untyped-def]
    """A CSV imported without --map: every row fails for the same reason; said once, naming --map, not
    once per row."""
    path = tmp_path / "sales.csv"
    path.write_text("customer_no,sold_at\n" + "".join(f"c-{i},2024-03-01T09:30:00Z\n" for i in range(40)))
    code, human, _ = await _cli(
        settings.data_dir,
        str(path),
        "--write-key",
        project.write_key,
        "--collector",
        str(collector.make_url("")),
        "--no-progress",
    )
    assert code == 1
    assert "every row rejected for one reason:" in human and "(lines 2–41)" in human, human
    assert "likely fix:" in human and "--map" in human
    assert "  line 3:" not in human and len(human.splitlines()) <= 4, human
