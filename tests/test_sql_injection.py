"""SQL injection through every path segment and query parameter of the query service.

Every payload is also a real customer id with one event of its own, so "treated as data" is checked
exactly: asking for the payload returns that customer's event and nothing else (no other customer, no
other project), and afterwards every table in ClickHouse and PostgreSQL still holds what it held.
"""

from __future__ import annotations

from urllib.parse import quote

import orjson
import pytest

from journeys.keys import add_key, create_project
from support import basic, wait_drained

PAYLOADS = [
    "'",
    "''",
    "\\'",
    "\\",
    "\\\\'",
    "' OR '1'='1",
    "') OR ('1'='1",
    "x' OR 1=1 --",
    "'; DROP TABLE events; --",
    "'; DROP TABLE api_keys; --",
    "1; SELECT sleep(3)",
    "' UNION ALL SELECT name FROM system.tables --",
    "{project_id:String}",
    "{ids:Array(String)}",
    "{limit:UInt32}",
    "}{",
    "{{table events}}",
    "$1",
    "%s",
    "%(project_id)s",
    "\u02bc OR 1=1 --",  # modifier apostrophe
    "\uff07 OR 1=1 --",  # fullwidth apostrophe
    "\u2019; DROP TABLE events; --",
    '" OR ""="',
    "`events`",
    "a/b/../../c",
    "ü\u0301ñí©ødé 😀",
    "*/ SELECT 1 /*",
]


def _q(value: str) -> str:
    return quote(value, safe="")


@pytest.fixture
async def seeded(http, collector, stores, project):  # type: ignore[no-untyped-def]
    """One event per payload (its own customer), a victim customer, and another project's customer."""
    async with stores.pg.acquire() as conn:
        admin = await add_key(conn, project.id, "admin")
        other = await create_project(conn, f"other-{project.id}")
    batch = [
        {"type": "track", "userId": p, "event": f"Hit {i}", "messageId": f"inj-{i}"} for i, p in enumerate(PAYLOADS)
    ]
    batch.append({"type": "track", "userId": "victim", "event": "Private", "messageId": "victim-1"})
    for key, events in (
        (project.write_key, batch),
        (other.write_key, [{"type": "track", "userId": "victim", "event": "Other project"}]),
    ):
        async with http.post(
            collector.make_url("/v1/batch"), data=orjson.dumps({"batch": events}), headers=basic(key)
        ) as r:
            assert r.status == 200, await r.text()
    await wait_drained(collector)
    return admin, other


async def _counts(stores, project_ids: list[str]) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """What must survive: rows per project in every ClickHouse table, and the PostgreSQL tables."""
    out: dict[str, object] = {}
    _, tables = await stores.clickhouse.query("SELECT name FROM system.tables WHERE database = currentDatabase()")
    out["clickhouse tables"] = sorted(t[0] for t in tables)
    for table in ("events", "quarantine", "identities"):
        _, rows = await stores.clickhouse.query(
            f"SELECT count() FROM {table} WHERE project_id IN {{p:Array(String)}}", {"p": project_ids}
        )
        out[table] = rows[0][0]
    for table in ("projects", "api_keys", "definitions"):
        out[table] = await stores.pg.fetchval(f"SELECT count(*) FROM {table}")
    return out


async def test_payloads_in_customer_paths_are_just_ids(http, query, stores, project, seeded) -> None:  # type: ignore[no-untyped-def]
    admin, other = seeded
    async with http.put(
        query.make_url("/v1/maps/m"),
        headers={**basic(admin), "Content-Type": "application/json"},
        data=orjson.dumps(
            {
                "stages": [{"id": "a", "name": "A"}],
                "touchpoints": [{"id": "t", "stage": "a", "match": {"event": "Private"}}],
            }
        ),
    ) as r:
        assert r.status == 201, await r.text()
    before = await _counts(stores, [project.id, other.id])
    read = basic(project.read_key)
    for i, payload in enumerate(PAYLOADS):
        async with http.get(query.make_url(f"/v1/customers/{_q(payload)}/events"), headers=read) as r:
            assert r.status == 200, (payload, await r.text())
            body = await r.json()
        assert [e["message_id"] for e in body["events"]] == [f"inj-{i}"], payload
        assert body["ids"] == [payload]
        async with http.get(query.make_url(f"/v1/customers/{_q(payload)}"), headers=read) as r:
            assert r.status == 200, (payload, await r.text())
            assert (await r.json())["customer_id"] == payload
        async with http.get(query.make_url(f"/v1/customers/{_q(payload)}/journey?map=m"), headers=read) as r:
            assert r.status == 200, (payload, await r.text())
            journey = await r.json()
        assert [t["message_id"] for t in journey["touchpoints"]] == [f"inj-{i}"], payload
    assert await _counts(stores, [project.id, other.id]) == before
    # The victim is still there, in this project only.
    async with http.get(query.make_url("/v1/customers/victim/events"), headers=read) as r:
        assert [e["event"] for e in (await r.json())["events"]] == ["Private"]


async def test_payloads_in_every_query_parameter_are_refused_or_harmless(http, query, stores, project, seeded) -> None:  # type: ignore[no-untyped-def]
    admin, other = seeded
    before = await _counts(stores, [project.id, other.id])
    read = basic(project.read_key)
    templates = [
        "/v1/customers/victim/events?limit={}",
        "/v1/customers/victim/journey?map={}",
        "/v1/customers/victim/journey?map=m&version={}",
        "/v1/maps/{}",
        "/v1/maps/{}/versions",
        "/v1/maps/m?version={}",
        "/v1/segments/{}",
        "/v1/segments/{}/versions",
        "/v1/segments/s?version={}",
        "/v1/stats?{}=1",
        *(f"{route}?map={{}}" for route in ("/v1/kpis", "/v1/kpis/daily")),
        *(
            f"{route}?map=m&{name}={{}}"
            for route in ("/v1/kpis", "/v1/kpis/daily")
            for name in ("version", "segment", "from", "to", "format")
        ),
    ]
    for payload in PAYLOADS:
        for template in templates:
            path = template.format(_q(payload))
            async with http.get(query.make_url(path), headers=read) as r:
                body = await r.json()
                # 4xx naming the parameter, or an answer about nothing (the payload names no map or customer).
                assert r.status in (200, 400, 404), (path, r.status, body)
                if r.status != 200:
                    assert body["errors"][0]["field"] and body["errors"][0]["reason"], body
                elif path.startswith("/v1/stats"):
                    assert body["events"] == len(PAYLOADS) + 1
                elif "/events" in path:
                    raise AssertionError(f"a bad limit was accepted: {path}")
    assert await _counts(stores, [project.id, other.id]) == before


async def test_payloads_in_deletes_and_writes_touch_only_that_literal(http, query, stores, project, seeded) -> None:  # type: ignore[no-untyped-def]
    admin, other = seeded
    victim_before = await _counts(stores, [other.id])
    for i, payload in enumerate(PAYLOADS):
        async with http.delete(query.make_url(f"/v1/customers/{_q(payload)}"), headers=basic(admin)) as r:
            assert r.status == 200, (payload, await r.text())
            assert (await r.json())["forgotten_ids"] == [payload]
        async with http.put(
            query.make_url(f"/v1/maps/{_q(payload)}"),
            headers=basic(admin),
            data=orjson.dumps({"stages": [{"id": "a", "name": payload}]}),
        ) as r:
            # 400 naming the field; 404 where the router's {name} (no '/', '{', '}') cannot match at all.
            assert r.status in (400, 404) and (await r.json())["errors"][0]["field"] in ("name", "path"), payload
    # Every payload customer is gone; the victim (this project and the other) is untouched.
    _, rows = await stores.clickhouse.query(
        "SELECT user_id FROM events WHERE project_id = {p:String} ORDER BY user_id", {"p": project.id}
    )
    assert [r[0] for r in rows] == ["victim"]
    assert await _counts(stores, [other.id]) == victim_before
    async with http.get(query.make_url("/v1/customers/victim/events"), headers=basic(other.read_key)) as r:
        assert [e["event"] for e in (await r.json())["events"]] == ["Other project"]
