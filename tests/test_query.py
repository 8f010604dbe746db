"""The read path: read keys only, project isolation, order, dedup, bound parameters."""

from __future__ import annotations

import orjson
import pytest

from support import basic, wait_drained


async def _send(http, collector, key, batch):  # type: ignore[no-untyped-def]
    async with http.post(collector.make_url("/v1/batch"), data=orjson.dumps({"batch": batch}), headers=basic(key)) as r:
        assert r.status == 200, await r.text()


async def _get(http, query, path, headers=None):  # type: ignore[no-untyped-def]
    async with http.get(query.make_url(path), headers=headers or {}) as resp:
        return resp.status, await resp.json()


async def test_customer_events_in_time_order_across_channels(http, collector, query, project):  # type: ignore[no-untyped-def]
    batch = [
        {
            "type": "track",
            "userId": "c-9",
            "event": "Store Purchase",
            "channel": "store",
            "messageId": "3",
            "timestamp": "2026-03-03T12:00:00Z",
        },
        {"type": "page", "userId": "c-9", "name": "Pricing", "messageId": "1", "timestamp": "2026-03-01T09:00:00Z"},
        {
            "type": "track",
            "userId": "c-9",
            "event": "Email Clicked",
            "channel": "email",
            "messageId": "2",
            "timestamp": "2026-03-02T08:30:00.250Z",
            "properties": {"campaign": "spring"},
        },
        {"type": "track", "userId": "someone-else", "event": "Noise", "messageId": "4"},
    ]
    await _send(http, collector, project.write_key, batch)
    await wait_drained(collector)
    status, body = await _get(http, query, "/v1/customers/c-9/events", basic(project.read_key))
    assert status == 200
    assert body["customer_id"] == "c-9" and body["count"] == 3
    assert [(e["message_id"], e["channel"], e["timestamp"]) for e in body["events"]] == [
        ("1", "web", "2026-03-01T09:00:00.000Z"),
        ("2", "email", "2026-03-02T08:30:00.250Z"),
        ("3", "store", "2026-03-03T12:00:00.000Z"),
    ]
    assert body["events"][1]["properties"] == {"campaign": "spring"}
    # Bearer works as well as Basic.
    status, bearer = await _get(
        http, query, "/v1/customers/c-9/events", {"Authorization": f"Bearer {project.read_key}"}
    )
    assert status == 200 and bearer == body
    status, limited = await _get(http, query, "/v1/customers/c-9/events?limit=2", basic(project.read_key))
    assert [e["message_id"] for e in limited["events"]] == ["1", "2"]


async def test_read_path_auth(http, query, project):  # type: ignore[no-untyped-def]
    status, body = await _get(http, query, "/v1/customers/x/events")
    assert status == 401 and body["errors"][0]["field"] == "Authorization"
    status, _ = await _get(http, query, "/v1/customers/x/events", basic("jr_forged"))
    assert status == 401
    status, body = await _get(http, query, "/v1/customers/x/events", basic(project.write_key))
    assert status == 403 and "write key cannot read" in body["errors"][0]["reason"]


async def test_another_projects_key_sees_nothing(http, collector, query, stores, project):  # type: ignore[no-untyped-def]
    from journeys.keys import create_project

    async with stores.pg.acquire() as conn:
        other = await create_project(conn, f"other-{project.id}")
    await _send(http, collector, project.write_key, [{"type": "track", "userId": "shared-id", "event": "Mine"}])
    await wait_drained(collector)
    status, mine = await _get(http, query, "/v1/customers/shared-id/events", basic(project.read_key))
    assert status == 200 and mine["count"] == 1
    status, theirs = await _get(http, query, "/v1/customers/shared-id/events", basic(other.read_key))
    assert status == 404 and theirs["errors"][0]["field"] == "customer_id"  # no such customer in theirs
    status, stats = await _get(http, query, "/v1/stats", basic(other.read_key))
    assert stats["events"] == 0 and stats["newest_received_at"] is None


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "10001", "1e3"])
async def test_bad_parameters_are_400_naming_the_parameter(http, query, project, limit):  # type: ignore[no-untyped-def]
    status, body = await _get(http, query, f"/v1/customers/x/events?limit={limit}", basic(project.read_key))
    assert status == 400 and body["errors"][0]["field"] == "limit"


async def test_hostile_customer_ids_are_just_ids(http, collector, query, project):  # type: ignore[no-untyped-def]
    hostile = "x' OR 1=1 --"
    await _send(
        http,
        collector,
        project.write_key,
        [
            {"type": "track", "userId": hostile, "event": "Quoted"},
            {"type": "track", "userId": "innocent", "event": "Other"},
        ],
    )
    await wait_drained(collector)
    from urllib.parse import quote

    status, body = await _get(http, query, f"/v1/customers/{quote(hostile, safe='')}/events", basic(project.read_key))
    assert status == 200 and [e["event"] for e in body["events"]] == ["Quoted"]
    status, body = await _get(http, query, "/v1/customers/%7Bproject_id%3AString%7D/events", basic(project.read_key))
    assert status == 404 and body["errors"][0]["field"] == "customer_id"  # an id like any other: nobody
    await _send(
        http, collector, project.write_key, [{"type": "track", "userId": "https://id.test/u/7", "event": "Slashy"}]
    )
    await wait_drained(collector)
    status, body = await _get(http, query, "/v1/customers/https:%2F%2Fid.test%2Fu%2F7/events", basic(project.read_key))
    assert status == 200 and [e["event"] for e in body["events"]] == ["Slashy"]


async def test_query_health_and_metrics(http, query):  # type: ignore[no-untyped-def]
    status, body = await _get(http, query, "/readyz")
    assert status == 200 and body["ready"] is True
    async with http.get(query.make_url("/metrics")) as resp:
        assert "journeys_http_requests_total" in await resp.text()
