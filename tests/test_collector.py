"""The collector over real HTTP on 127.0.0.1, writing to real chDB through the spool."""

from __future__ import annotations

import gzip
import json
import uuid
import zlib
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from support import basic, gzipped, stored_rows, wait_drained, wait_stored


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


async def _post(http, collector, path, body, key=None, headers=None):  # type: ignore[no-untyped-def]
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(
        collector.make_url(path),
        data=data,
        headers={"Content-Type": "application/json", **(basic(key) if key else {}), **(headers or {})},
    ) as resp:
        return resp.status, await resp.json(), resp.headers


async def _rows(stores, project_id, sql_where="1", **params):  # type: ignore[no-untyped-def]
    columns, rows = await stores.clickhouse.query(
        f"SELECT * FROM events WHERE project_id = {{p:String}} AND {sql_where} ORDER BY timestamp",
        {"p": project_id, **params},
    )
    return [dict(zip(columns, r)) for r in rows]


@pytest.mark.parametrize(
    "path,event,expect",
    [
        ("/v1/track", {"userId": "u", "event": "Order Completed"}, {"type": "track", "event": "Order Completed"}),
        ("/v1/identify", {"userId": "u", "traits": {"plan": "b2b"}}, {"type": "identify", "touchpoint": "identify"}),
        (
            "/v1/page",
            {"anonymousId": "a", "name": "Home"},
            {"type": "page", "channel": "web", "touchpoint": "page_view"},
        ),
        (
            "/v1/screen",
            {"userId": "u", "name": "Cart"},
            {"type": "screen", "channel": "app", "touchpoint": "screen_view"},
        ),
        ("/v1/group", {"userId": "u", "groupId": "acme"}, {"type": "group", "group_id": "acme"}),
        ("/v1/alias", {"userId": "u", "previousId": "a"}, {"type": "alias", "previous_id": "a"}),
    ],
)
async def test_each_single_event_endpoint_stores_its_type(http, collector, stores, project, path, event, expect):  # type: ignore[no-untyped-def]
    status, body, headers = await _post(http, collector, path, event, project.write_key)
    assert status == 200, body
    assert body == {"success": True, "accepted": 1, "quarantined": []}
    assert headers["X-Request-Id"]
    await wait_stored(stores, project.id, 1)
    [row] = await _rows(stores, project.id)
    for field, value in expect.items():
        assert row[field] == value, (field, row)
    if expect["type"] == "identify":
        assert json.loads(row["traits"]) == {"plan": "b2b"}


async def test_batch_with_touchpoint_fields_and_utm(http, collector, stores, project):  # type: ignore[no-untyped-def]
    batch = [
        {
            "type": "track",
            "userId": "c1",
            "event": "Purchase",
            "channel": "store",
            "touchpoint": "pos_purchase",
            "sentiment": "positive",
            "messageId": "m1",
        },
        {
            "type": "track",
            "userId": "c1",
            "event": "Email Clicked",
            "properties": {"channel": "Email", "action": "click"},
            "messageId": "m2",
        },
        {
            "type": "page",
            "anonymousId": "anon",
            "messageId": "m3",
            "context": {
                "page": {
                    "url": "https://shop.test/p?utm_source=news&utm_medium=email&utm_campaign=spring",
                    "referrer": "https://mail.test/",
                }
            },
        },
        {"type": "track", "userId": "c1", "event": "Call", "context": {"channel": "call-center"}, "messageId": "m4"},
    ]
    status, body, _ = await _post(http, collector, "/v1/batch", {"batch": batch}, project.write_key)
    assert (status, body["accepted"]) == (200, 4), body
    await wait_stored(stores, project.id, 4)
    rows = {r["message_id"]: r for r in await _rows(stores, project.id)}
    assert (rows["m1"]["channel"], rows["m1"]["touchpoint"], rows["m1"]["sentiment"]) == (
        "store",
        "pos_purchase",
        "positive",
    )
    assert (rows["m2"]["channel"], rows["m2"]["touchpoint"]) == ("email", "click")
    assert rows["m3"]["page_url"].startswith("https://shop.test/p")
    assert (rows["m3"]["utm_source"], rows["m3"]["utm_medium"], rows["m3"]["utm_campaign"]) == (
        "news",
        "email",
        "spring",
    )
    assert rows["m3"]["referrer"] == "https://mail.test/"
    assert rows["m4"]["channel"] == "call_centre"
    assert rows["m3"]["distinct_id"] == "anon" and rows["m1"]["distinct_id"] == "c1"


async def test_write_key_in_body_and_gzip(http, collector, stores, project):  # type: ignore[no-untyped-def]
    doc = {"writeKey": project.write_key, "batch": [{"type": "track", "userId": "g", "event": "Zipped"}]}
    status, body, _ = await _post(http, collector, "/v1/batch", gzipped(doc), headers={"Content-Encoding": "gzip"})
    assert status == 200, body
    status, body, _ = await _post(
        http, collector, "/v1/track", {"writeKey": project.write_key, "userId": "g", "event": "Single"}
    )
    assert status == 200, body
    await wait_stored(stores, project.id, 2)
    rows = await _rows(stores, project.id)
    assert sorted(r["event"] for r in rows) == ["Single", "Zipped"]
    assert all(project.write_key not in r["properties"] + r["context"] for r in rows)


async def test_message_id_generated_when_absent(http, collector, stores, project):  # type: ignore[no-untyped-def]
    await _post(http, collector, "/v1/track", {"userId": "x", "event": "E"}, project.write_key)
    await wait_stored(stores, project.id, 1)
    [row] = await _rows(stores, project.id)
    assert uuid.UUID(row["message_id"])


async def test_bad_events_quarantined_good_ones_accepted(http, collector, stores, project):  # type: ignore[no-untyped-def]
    batch = [
        {"type": "track", "userId": "ok", "event": "Good", "messageId": "good-1"},
        {"type": "track", "userId": "bad", "messageId": "no-event-name"},
        {"type": "launch", "userId": "bad"},
        42,
        {"type": "track", "event": "Nobody"},
        {"type": "track", "userId": "ok", "event": "Bad sentiment", "sentiment": "ecstatic"},
        {"type": "track", "userId": "ok", "event": "Big", "properties": {"blob": "x" * 40_000}},
        {"type": "track", "userId": "ok", "event": "Future", "timestamp": "2999-01-01T00:00:00Z"},
        {"type": "track", "userId": "ok", "event": "Good too", "messageId": "good-2"},
    ]
    status, body, headers = await _post(http, collector, "/v1/batch", {"batch": batch}, project.write_key)
    assert status == 200, body
    assert body["accepted"] == 2
    problems = {q["index"]: q["errors"] for q in body["quarantined"]}
    assert set(problems) == {1, 2, 3, 4, 5, 6, 7}
    assert problems[1] == [{"field": "event", "reason": "Field required"}]
    assert problems[2][0]["field"] == "type"
    assert problems[3][0]["field"] == "(event)"
    assert problems[4] == [{"field": "userId", "reason": "userId or anonymousId is required"}]
    assert problems[5][0]["field"] == "sentiment"
    assert "event limit" in problems[6][0]["reason"]
    assert problems[7][0]["field"] == "timestamp"

    await wait_stored(stores, project.id, 2)
    await wait_stored(stores, project.id, 7, table="quarantine")
    columns, rows = await stores.clickhouse.query(
        "SELECT batch_index, message_id, reason, raw, request_id FROM quarantine WHERE project_id = {p:String} "
        "ORDER BY batch_index",
        {"p": project.id},
    )
    by_index = {r[0]: r for r in rows}
    assert set(by_index) == {1, 2, 3, 4, 5, 6, 7}
    assert by_index[1][1] == "no-event-name"
    assert json.loads(by_index[1][2]) == problems[1]
    assert json.loads(by_index[1][3]) == batch[1]
    assert by_index[3][3] == "42"
    assert {r[4] for r in rows} == {headers["X-Request-Id"]}
    assert sorted(r["message_id"] for r in await _rows(stores, project.id)) == ["good-1", "good-2"]


async def test_all_invalid_request_is_refused_and_nothing_stored(http, collector, stores, project):  # type: ignore[no-untyped-def]
    status, body, _ = await _post(
        http,
        collector,
        "/v1/batch",
        {"batch": [{"type": "track", "userId": "u"}, {"type": "alias", "userId": "u"}]},
        project.write_key,
    )
    assert status == 400
    assert body["errors"] == [
        {"index": 0, "field": "event", "reason": "Field required"},
        {"index": 1, "field": "previousId", "reason": "Field required"},
    ]
    # A good request afterwards proves the spool and inserter moved on; the refused one left nothing behind.
    await _post(http, collector, "/v1/track", {"userId": "u", "event": "After"}, project.write_key)
    await wait_stored(stores, project.id, 1)
    assert await stored_rows(stores, project.id, "quarantine") == 0
    assert [r["event"] for r in await _rows(stores, project.id)] == ["After"]


@pytest.mark.parametrize(
    "body,headers,status,field",
    [
        (b"{not json", {}, 400, "body"),
        (b"", {}, 400, "body"),
        (b"[1,2]", {}, 400, "body"),
        (b'{"batch": {}}', {}, 400, "batch"),
        (b'{"batch": []}', {}, 400, "batch"),
        (b'{"batch": [{"type":"track","userId":"\xff\xfe","event":"x"}]}', {}, 400, "body"),
        (b"not gzip at all", {"Content-Encoding": "gzip"}, 400, "body"),
        (gzip.compress(b'{"batch": []}')[:-6], {"Content-Encoding": "gzip"}, 400, "body"),
        (b"{}", {"Content-Encoding": "br"}, 415, "Content-Encoding"),
    ],
)
async def test_malformed_requests_get_4xx_naming_the_problem(  # type: ignore[no-untyped-def]
    http, collector, stores, project, body, headers, status, field
):
    got, payload, _ = await _post(http, collector, "/v1/batch", body, project.write_key, headers)
    assert got == status, payload
    assert payload["errors"][0]["field"] == field
    assert payload["errors"][0]["reason"]


async def test_size_limits(http, collector, stores, project):  # type: ignore[no-untyped-def]
    big_batch = {"batch": [{"type": "track", "userId": "u", "event": "E", "properties": {"p": "x" * 20_000}}] * 30}
    status, payload, _ = await _post(http, collector, "/v1/batch", big_batch, project.write_key)
    assert status == 413 and payload["errors"][0]["field"] == "body"
    # A gzip bomb: tiny on the wire, far over the limit once inflated. Refused without inflating it all.
    bomb = gzip.compress(b'{"batch": [' + b" " * 50_000_000 + b"]}")
    assert len(bomb) < 100_000
    status, payload, _ = await _post(
        http, collector, "/v1/batch", bomb, project.write_key, {"Content-Encoding": "gzip"}
    )
    assert status == 413 and "decompressed" in payload["errors"][0]["reason"]
    deflated = zlib.compress(orjson.dumps({"batch": [{"type": "track", "userId": "u", "event": "Deflated"}]}))
    status, payload, _ = await _post(
        http, collector, "/v1/batch", deflated, project.write_key, {"Content-Encoding": "deflate"}
    )
    assert status == 200, payload
    await wait_stored(stores, project.id, 1)


async def test_limits_are_configurable(http, stores, project, tmp_path):  # type: ignore[no-untyped-def]
    from aiohttp.test_utils import TestServer

    from collector.app import create_app
    from support import with_settings
    from journeys.metrics import Metrics

    small = with_settings(stores, spool_dir=tmp_path / "spool", max_event_bytes=300, max_request_bytes=2000)
    server = TestServer(create_app(small, Metrics()), host="127.0.0.1")
    await server.start_server()
    try:
        event = {"type": "track", "userId": "u", "event": "E", "properties": {"p": "x" * 400}}
        status, payload, _ = await _post(
            http, server, "/v1/batch", {"batch": [event, {**event, "properties": {}}]}, project.write_key
        )
        assert status == 200 and payload["quarantined"][0]["index"] == 0
        status, payload, _ = await _post(
            http, server, "/v1/batch", {"batch": [{**event, "properties": {}}] * 60}, project.write_key
        )
        assert status == 413
    finally:
        await server.close()


async def test_auth(http, collector, stores, project):  # type: ignore[no-untyped-def]
    event = {"userId": "u", "event": "E"}
    status, payload, _ = await _post(http, collector, "/v1/track", event)
    assert status == 401 and payload["errors"][0]["field"] == "Authorization"
    status, _, _ = await _post(http, collector, "/v1/track", event, "jw_not-a-real-key")
    assert status == 401
    status, payload, _ = await _post(http, collector, "/v1/track", event, project.read_key)
    assert status == 403 and "read key cannot write" in payload["errors"][0]["reason"]
    status, _, _ = await _post(http, collector, "/v1/track", {**event, "writeKey": project.read_key})
    assert status == 403
    await _post(http, collector, "/v1/track", {"userId": "u", "event": "Marker"}, project.write_key)
    await wait_stored(stores, project.id, 1)
    assert [r["event"] for r in await _rows(stores, project.id)] == ["Marker"]


async def test_clock_skew_corrected_against_receive_time(http, collector, stores, project):  # type: ignore[no-untyped-def]
    # The device clock is 2 hours behind: it stamped the event 10 s before it sent it.
    device_now = datetime.now(timezone.utc) - timedelta(hours=2)
    event = {
        "type": "track",
        "userId": "skew",
        "event": "E",
        "messageId": "skewed",
        "timestamp": _iso(device_now - timedelta(seconds=10)),
    }
    status, _, _ = await _post(
        http, collector, "/v1/batch", {"batch": [event], "sentAt": _iso(device_now)}, project.write_key
    )
    assert status == 200
    await wait_stored(stores, project.id, 1)
    [row] = await _rows(stores, project.id)
    lag = (row["received_at"] - row["timestamp"]).total_seconds()
    assert 9.9 <= lag <= 10.1, lag
    assert abs((row["received_at"] - row["original_timestamp"]).total_seconds() - 7210) < 5
    # Without sentAt the client's timestamp is kept as sent (historical imports rely on it).
    await _post(
        http,
        collector,
        "/v1/track",
        {"userId": "skew", "event": "Old", "timestamp": "2024-03-01T10:00:00Z"},
        project.write_key,
    )
    await wait_stored(stores, project.id, 2)
    old = [r for r in await _rows(stores, project.id) if r["event"] == "Old"][0]
    assert old["timestamp"] == datetime(2024, 3, 1, 10, 0)


async def test_duplicates_counted_once_in_reads(http, collector, query, stores, project):  # type: ignore[no-untyped-def]
    batch = {"batch": [{"type": "track", "userId": "dup", "event": f"E{i}", "messageId": f"m-{i}"} for i in range(5)]}
    for _ in range(3):  # an SDK retrying after lost responses
        status, _, _ = await _post(http, collector, "/v1/batch", batch, project.write_key)
        assert status == 200
    await wait_drained(collector)
    # Raw rows may be 15 or, once a background merge ran, fewer: reads must not depend on which.
    assert 5 <= await stored_rows(stores, project.id) <= 15
    async with http.get(query.make_url("/v1/customers/dup/events"), headers=basic(project.read_key)) as resp:
        body = await resp.json()
    assert [e["message_id"] for e in body["events"]] == [f"m-{i}" for i in range(5)]
    async with http.get(query.make_url("/v1/stats"), headers=basic(project.read_key)) as resp:
        stats = await resp.json()
    assert stats["events"] == 5 and stats["customers"] == 1


async def test_health_ready_and_metrics(http, collector, project):  # type: ignore[no-untyped-def]
    async with http.get(collector.make_url("/healthz")) as resp:
        assert resp.status == 200
    async with http.get(collector.make_url("/readyz")) as resp:
        ready = await resp.json()
    assert resp.status == 200 and ready["ready"] is True
    assert set(ready["checks"]) == {"clickhouse", "postgres", "spool"}
    await _post(
        http,
        collector,
        "/v1/batch",
        {"batch": [{"type": "track", "userId": "m", "event": "E", "channel": "email"}, {"type": "track"}]},
        project.write_key,
    )
    await _post(http, collector, "/v1/batch", b"{bad", project.write_key)
    await wait_drained(collector)
    text = await _metric_text(http, collector, "")
    for needle in (
        'journeys_http_requests_total{route="/v1/batch",service="collector",status="200"} 1.0',
        'journeys_http_requests_total{route="/v1/batch",service="collector",status="400"} 1.0',
        'journeys_events_accepted_total{channel="email"} 1.0',
        'journeys_events_quarantined_total{reason="event"} 1.0',
        'journeys_events_rejected_total{reason="invalid_json"} 1.0',
        "journeys_request_events_bucket",
        "journeys_group_commit_requests_bucket",
        'journeys_clickhouse_insert_duration_seconds_bucket{le="0.001",table="events"}',
        "journeys_spool_bytes",
        "journeys_spool_oldest_event_age_seconds",
        "journeys_clickhouse_errors_total",
    ):
        assert needle in text, needle


async def _metric_text(http, server, needle):  # type: ignore[no-untyped-def]
    async with http.get(server.make_url("/metrics")) as resp:
        text = await resp.text()
    return text if needle in text else ""


async def test_unknown_route_and_method_get_json_errors(http, collector):  # type: ignore[no-untyped-def]
    async with http.get(collector.make_url("/v1/nope")) as resp:
        assert resp.status == 404
        assert (await resp.json())["errors"][0]["field"] == "path"
    async with http.get(collector.make_url("/v1/batch")) as resp:
        assert resp.status == 405
        assert (await resp.json())["errors"]


async def test_spool_over_cap_answers_503_with_retry_after_and_loses_nothing(http, stores, project, tmp_path):  # type: ignore[no-untyped-def]
    from aiohttp.test_utils import TestServer

    from collector.app import create_app
    from support import with_settings
    from journeys.metrics import Metrics

    # The inserter lingers for an hour: nothing leaves the spool, so it fills like during an outage.
    stalled = with_settings(
        stores, spool_dir=tmp_path / "spool", spool_max_bytes=1024 * 1024, insert_linger_ms=3_600_000
    )
    server = TestServer(create_app(stalled, Metrics()), host="127.0.0.1")
    await server.start_server()
    acked: list[str] = []
    try:
        refused = None
        for b in range(200):
            batch: list[dict[str, Any]] = [
                {
                    "type": "track",
                    "userId": f"s{i}",
                    "event": "E",
                    "messageId": f"full-{b}-{i}",
                    "properties": {"pad": "p" * 200},
                }
                for i in range(50)
            ]
            status, payload, headers = await _post(http, server, "/v1/batch", {"batch": batch}, project.write_key)
            if status == 503:
                refused = (payload, headers)
                break
            assert status == 200
            acked.extend(e["messageId"] for e in batch)
        assert refused is not None, "spool cap never reached"
        payload, headers = refused
        assert headers["Retry-After"].isdigit() and payload["errors"][0]["field"] == "server"
        async with http.get(server.make_url("/readyz")) as resp:
            ready = await resp.json()
        assert resp.status == 503 and ready["checks"]["spool"]["ok"] is False
        async with http.get(server.make_url("/metrics")) as resp:
            assert "journeys_spool_full_rejections_total 1.0" in await resp.text()
    finally:
        await server.close()  # shutdown drains the spool into ClickHouse
    assert len(acked) > 100
    columns, rows = await stores.clickhouse.query(
        "SELECT message_id FROM events WHERE project_id = {p:String} LIMIT 1 BY message_id", {"p": project.id}
    )
    assert sorted(r[0] for r in rows) == sorted(acked)


async def test_an_unknown_spool_record_is_skipped_not_a_stall(http, collector, stores, project):  # type: ignore[no-untyped-def]
    from collector.appkeys import SPOOL

    await collector.app[SPOOL].append(b"Xwritten by some other version\n")
    status, _, _ = await _post(
        http, collector, "/v1/track", {"userId": "after-x", "event": "Still flows"}, project.write_key
    )
    assert status == 200
    await wait_drained(collector)
    assert [r["event"] for r in await _rows(stores, project.id)] == ["Still flows"]
    text = await _metric_text(http, collector, "unknown_record")
    assert 'journeys_clickhouse_errors_total{operation="unknown_record"} 1.0' in text
