"""Who may do what: keys hashed at rest and compared by hash, each kind limited to its job, projects sealed
from each other, and no secret in any log line.

Route lists come from the apps' own routers, so a route added later is checked without editing this file.
How keys are compared (journeys/keys.py): the presented secret is SHA-256'd and looked up by that digest
(a unique index), then the stored digest is compared again with ``hmac.compare_digest``. Timing can only
ever tell an attacker about digests of guesses, never about the secret, and the final comparison is
constant-time anyway. The test below proves the secret itself never reaches PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer

from journeys.events import EVENT_TYPES
from journeys.keys import KeyResolver, add_key, create_project, revoke_key
from journeys.metrics import Metrics
from journeys.openapi import registered_operations
from support import basic, wait_drained

_PARAM = re.compile(r"\{[^}]+\}")
_OPS = {"/healthz", "/readyz", "/metrics", "/openapi.json"}
# The dashboard's page and assets are public: they hold no data; the page signs in with a read key.
_PUBLIC_ASSETS = {"/", "/static/dashboard.js", "/static/dashboard.css", "/static/plotly.min.js"}
# Reads for admin keys only: quarantined events are raw customer data (docs/quarantine.md); the project's
# keys are for those who manage them (docs/keys.md).
# Reads whose question is too large for a URL: a draft map to preview KPIs for (query/kpi_preview.py).
_POSTED_READS = {("POST", "/v1/kpis/preview")}
_ADMIN_READS = {("GET", "/v1/quarantine"), ("GET", "/v1/keys"), ("GET", "/v1/alerts/signing-secret")}
# The collector's admin routes: not ingest, and no ingest key reaches them.
_COLLECTOR_ADMIN = {("POST", "/v1/quarantine/replay")}


def _concrete(path: str) -> str:
    return _PARAM.sub("c1", path)


@pytest.fixture
async def keys(stores, project):  # type: ignore[no-untyped-def]
    async with stores.pg.acquire() as conn:
        return {
            "write": project.write_key,
            "read": project.read_key,
            "public": await add_key(conn, project.id, "public"),
            "admin": await add_key(conn, project.id, "admin"),
        }


# --------------------------------------------------------------------------------------------------------
# keys at rest
# --------------------------------------------------------------------------------------------------------


async def test_keys_are_stored_only_as_sha256(stores, project, keys) -> None:  # type: ignore[no-untyped-def]
    rows = await stores.pg.fetch("SELECT * FROM api_keys WHERE project_id = $1", project.id)
    assert len(rows) == 4
    digests = {bytes(r["key_hash"]) for r in rows}
    assert digests == {hashlib.sha256(k.encode()).digest() for k in keys.values()}
    dump = repr([dict(r) for r in rows])
    for secret in keys.values():
        assert secret not in dump and secret[6:] not in dump and secret[6:20] not in dump
        # What is kept in clear: the kind's prefix and 3 characters (18 bits), for people to tell keys apart.
        assert secret[:6] in {r["prefix"] for r in rows}
    columns = {c for r in rows for c in r.keys()}
    assert columns == {"id", "project_id", "kind", "prefix", "key_hash", "created_at", "last_used_at", "revoked_at"}


class _RecordingPool:
    """Passes every call through to the real pool and keeps the arguments PostgreSQL was sent."""

    def __init__(self, pool: Any):
        self.pool = pool
        self.sent: list[tuple[Any, ...]] = []

    async def fetchrow(self, *args: Any) -> Any:
        self.sent.append(args)
        return await self.pool.fetchrow(*args)


async def test_lookup_is_by_digest_the_secret_never_reaches_postgres(stores, project) -> None:  # type: ignore[no-untyped-def]
    pool = _RecordingPool(stores.pg)
    resolver = KeyResolver(pool, ttl=0)
    found = await resolver.resolve(project.read_key)
    assert found is not None and (found.project_id, found.kind) == (project.id, "read")
    # Same length, one character off; a prefix; a longer key: all unknown.
    for wrong in (
        project.read_key[:-1] + ("A" if project.read_key[-1] != "A" else "B"),
        project.read_key[:-1],
        project.read_key + "x",
        project.read_key.upper(),
    ):
        assert await resolver.resolve(wrong) is None
    assert await resolver.resolve("x" * 201) is None  # over the length cap: not even looked up
    assert len(pool.sent) == 5
    for sql, *args in pool.sent:
        assert "key_hash = $1" in sql
        assert args and all(isinstance(a, bytes) and len(a) == 32 for a in args)
        assert project.read_key not in repr(args)


async def test_a_revoked_key_stops_working(http, stores, project, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from collector.app import create_app
    from support import with_settings

    fresh = dataclasses.replace(with_settings(stores, spool_dir=tmp_path / "spool"), keys=KeyResolver(stores.pg, ttl=0))
    server = TestServer(create_app(fresh, Metrics()), host="127.0.0.1")
    await server.start_server()
    try:
        async with stores.pg.acquire() as conn:
            secret = await add_key(conn, project.id, "write")
            event = {"userId": "u", "event": "Before"}
            async with http.post(server.make_url("/v1/track"), json=event, headers=basic(secret)) as r:
                assert r.status == 200
            await revoke_key(conn, secret)
        async with http.post(server.make_url("/v1/track"), json=event, headers=basic(secret)) as r:
            assert r.status == 401 and "revoked" in (await r.json())["errors"][0]["reason"]
    finally:
        await server.close()


# --------------------------------------------------------------------------------------------------------
# each kind of key does its job only
# --------------------------------------------------------------------------------------------------------


async def _status(http, server, method: str, path: str, key: str | None, body: bytes = b"{}") -> int:  # type: ignore[no-untyped-def]
    headers = {"Content-Type": "application/json", **(basic(key) if key else {})}
    async with http.request(
        method, server.make_url(path), data=body if method in ("POST", "PUT") else None, headers=headers
    ) as resp:
        if resp.status >= 400:
            assert (await resp.json())["errors"][0]["reason"]
        return resp.status


def _guarded(app) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return sorted((m, p) for m, p in registered_operations(app) if p not in _OPS | _PUBLIC_ASSETS)


async def test_only_read_and_admin_keys_reach_the_query_service(http, query, keys) -> None:  # type: ignore[no-untyped-def]
    routes = _guarded(query.app)
    assert len(routes) >= 10
    for method, path in routes:
        url = _concrete(path)
        for kind in ("write", "public"):
            assert await _status(http, query, method, url, keys[kind]) == 403, (kind, method, path)
        assert await _status(http, query, method, url, None) == 401, (method, path)
        assert await _status(http, query, method, url, "jr_" + "x" * 43) == 401, (method, path)
        changes = (method in ("PUT", "DELETE", "POST") and (method, path) not in _POSTED_READS) or (
            method,
            path,
        ) in _ADMIN_READS
        read_status = await _status(http, query, method, url, keys["read"])
        assert (read_status == 403) == changes, (method, path, read_status)  # read keys read, never change
        if changes:
            assert await _status(http, query, method, url, keys["admin"]) != 403, (method, path)


async def test_only_write_and_public_keys_reach_ingest(http, collector, stores, project, keys) -> None:  # type: ignore[no-untyped-def]
    ingest = [
        (m, p)
        for m, p in _guarded(collector.app)
        if p.startswith("/v1/") and m == "POST" and "{" not in p and (m, p) not in _COLLECTOR_ADMIN
    ]
    assert len(ingest) >= 7
    event = {"type": "track", "userId": "u", "event": "E", "previousId": "p", "groupId": "g"}  # valid on every route
    for method, path in ingest:
        body = orjson.dumps({"batch": [event]} if path == "/v1/batch" else event)
        for kind in ("read", "admin"):
            assert await _status(http, collector, method, path, keys[kind], body) == 403, (kind, path)
        if path != "/v1/batch" and path.removeprefix("/v1/") not in EVENT_TYPES:
            continue  # not a Segment route (e.g. /v1/import): its own tests cover what it accepts
        for kind in ("read", "admin"):
            # The same key in the body (Segment's writeKey) is refused the same way.
            in_body = orjson.dumps({**orjson.loads(body), "writeKey": keys[kind]})
            assert await _status(http, collector, method, path, None, in_body) == 403, (kind, path)
        assert await _status(http, collector, method, path, None, body) == 401
        assert await _status(http, collector, method, path, keys["write"], body) == 200, path
        # A public key writes too, but only from a web page its project lists (collector/cors.py): from
        # here, with no Origin, it may be refused, and then for the Origin alone, never as a bad key.
        async with http.post(collector.make_url(path), data=body, headers=basic(keys["public"])) as resp:
            assert resp.status == 200 or (resp.status == 403 and (await resp.json())["errors"][0]["field"] == "Origin")
    await wait_drained(collector)


async def test_only_admin_keys_reach_the_collectors_admin_routes(http, collector, keys) -> None:  # type: ignore[no-untyped-def]
    assert _COLLECTOR_ADMIN <= registered_operations(collector.app)
    for method, path in sorted(_COLLECTOR_ADMIN):
        for kind in ("write", "public", "read"):
            assert await _status(http, collector, method, path, keys[kind]) == 403, (kind, method, path)
        assert await _status(http, collector, method, path, None) == 401, (method, path)
        assert await _status(http, collector, method, path, "ja_" + "x" * 43) == 401, (method, path)
        assert await _status(http, collector, method, path, keys["admin"]) == 200, (method, path)


# --------------------------------------------------------------------------------------------------------
# projects are sealed from each other
# --------------------------------------------------------------------------------------------------------


async def test_project_a_never_sees_or_writes_project_b(http, collector, query, stores, project, keys) -> None:  # type: ignore[no-untyped-def]
    async with stores.pg.acquire() as conn:
        other = await create_project(conn, f"b-{project.id}")
        other_admin = await add_key(conn, other.id, "admin")
    # B's data: a customer, a map, a segment.
    async with http.post(
        collector.make_url("/v1/batch"),
        headers=basic(other.write_key),
        data=orjson.dumps(
            {
                "batch": [
                    {"type": "identify", "userId": "b-cust", "traits": {"plan": "secret"}},
                    {"type": "track", "userId": "b-cust", "event": "B only"},
                ]
            }
        ),
    ) as r:
        assert r.status == 200
    for kind, doc in (
        ("maps", {"stages": [{"id": "a", "name": "A"}]}),
        ("segments", {"rules": [{"field": "traits.plan", "op": "exists"}]}),
    ):
        async with http.put(
            query.make_url(f"/v1/{kind}/b-{kind}"), headers=basic(other_admin), data=orjson.dumps(doc)
        ) as r:
            assert r.status == 201, await r.text()
    # A writes with crafted fields naming B: project ids in the body, B's write key in the body while
    # A's key is in the header, A's key in the password slot with B's as the user…
    crafted = [
        (
            {
                "type": "track",
                "userId": "b-cust",
                "event": "A forged",
                "projectId": other.id,
                "project_id": other.id,
                "context": {"projectId": other.id},
            },
            basic(project.write_key),
        ),
        (
            {"type": "track", "userId": "b-cust", "event": "A with B writeKey", "writeKey": other.write_key},
            basic(project.write_key),
        ),
    ]
    for event, headers in crafted:
        async with http.post(
            collector.make_url("/v1/batch"), headers=headers, data=orjson.dumps({"batch": [event]})
        ) as r:
            assert r.status == 200
    await wait_drained(collector)
    _, rows = await stores.clickhouse.query(
        "SELECT project_id, event FROM events WHERE user_id = 'b-cust' AND project_id IN {p:Array(String)} ORDER BY event",
        {"p": [project.id, other.id]},
    )
    assert sorted(rows) == sorted(
        [(other.id, ""), (other.id, "B only"), (project.id, "A forged"), (project.id, "A with B writeKey")]
    )

    read = basic(project.read_key)
    async with http.get(query.make_url("/v1/customers/b-cust/events"), headers=read) as r:
        assert {e["event"] for e in (await r.json())["events"]} == {"A forged", "A with B writeKey"}
    async with http.get(query.make_url("/v1/customers/b-cust"), headers=read) as r:
        assert (await r.json())["traits"] == {}
    for path in (
        "/v1/maps/b-maps",
        "/v1/segments/b-segments",
        "/v1/maps/b-maps/versions",
        "/v1/customers/b-cust/journey?map=b-maps",
    ):
        assert await _status(http, query, "GET", path, project.read_key) == 404, path
    for kind in ("maps", "segments"):
        async with http.get(query.make_url(f"/v1/{kind}"), headers=read) as r:
            assert (await r.json())["items"] == []
    async with http.get(query.make_url("/v1/stats"), headers=read) as r:
        assert (await r.json())["events"] == 2
    # A's admin forgetting "b-cust" forgets A's b-cust only.
    async with http.delete(query.make_url("/v1/customers/b-cust"), headers=basic(keys["admin"])) as r:
        assert r.status == 200
    async with http.get(query.make_url("/v1/customers/b-cust/events"), headers=basic(other.read_key)) as r:
        assert sorted(e["event"] for e in (await r.json())["events"]) == ["", "B only"]
    async with http.get(query.make_url("/v1/maps/b-maps"), headers=basic(other.read_key)) as r:
        assert r.status == 200


# --------------------------------------------------------------------------------------------------------
# no secret in any log line (a real `journeys up`, its own JSON log)
# --------------------------------------------------------------------------------------------------------


def test_no_key_in_the_service_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from live import Live, call

    live = Live(tmp_path)
    try:
        keys = live.project("logs")
        secrets = [keys.write, keys.read, keys.admin, keys.public]
        event = {"type": "track", "userId": "log-user", "event": "Logged"}
        for key in secrets:
            for auth in (basic(key), {"Authorization": f"Bearer {key}"}, {"Authorization": f"Basic {key}"}):
                call(live.collector, "POST", "/v1/batch", orjson.dumps({"batch": [event]}), auth)
                call(live.collector, "POST", "/v1/track", orjson.dumps({**event, "writeKey": key}))
                call(live.query, "GET", "/v1/customers/log-user/events", headers=auth)
                call(live.query, "GET", f"/v1/customers/{key}/events?writeKey={key}", headers=auth)
                call(live.query, "PUT", "/v1/maps/m", b"{not json " + key.encode(), auth)
            # Malformed requests that aiohttp itself refuses, with the key in the offending line.
            call(live.collector, "POST", "/v1/track", b"{}", {"Authorization": f"Basic {key}\x01"})
            call(live.collector, "POST", "/v1/track", b"{}", {"Authorization": f"Bearer {key}", "X-Bad": "\x7f" + key})
            # Quarantined and refused events carrying the key as data.
            call(
                live.collector,
                "POST",
                "/v1/batch",
                orjson.dumps({"batch": [{"type": "track", "event": key}]}),
                basic(keys.write),
            )
        assert live.alive()
    finally:
        assert live.stop() == 0
    log = live.log()
    assert log.count("journeys.access") > 50  # the log did record these requests
    for line in log.splitlines():
        if line.startswith("{"):
            json.loads(line)  # every line is one JSON object
    for key in secrets:
        for fragment in (key, key[3:], key[6:26]):
            assert fragment not in log, fragment
