"""The key lifecycle (docs/keys.md): `journeys project list`, `journeys key list`, `journeys key revoke`, the
admin API (GET/POST /v1/keys, DELETE /v1/keys/{prefix}), "last used" recorded cheaply, and a revoked key
refused by the collector and the query service within the key-cache TTL.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer

from journeys.keys import KeyResolver, add_key, create_project
from journeys.metrics import Metrics
from live import call
from testkit.service import Service, journeys, stop_leftover_postgres
from support import basic, with_settings

TTL = 1.0  # JOURNEYS_KEY_CACHE_TTL_S in these tests
SLACK = 1.5  # scheduling, a request in flight, a slow CI machine


def _track(base: str, key: str) -> int:
    body = orjson.dumps({"userId": "k-1", "event": "Keyed"})
    return call(base, "POST", "/v1/track", body, {"Content-Type": "application/json", **basic(key)}).status


def _refused_within(what: Any, limit: float) -> float:
    """Seconds until ``what()`` answers 401 (polled), failing past ``limit``."""
    began = time.monotonic()
    while True:
        status = what()
        elapsed = time.monotonic() - began
        if status == 401:
            return elapsed
        assert status == 200, status
        assert elapsed < limit, f"still accepted {elapsed:.1f}s after revoking (key-cache TTL {TTL}s)"
        time.sleep(0.05)


def _ok(done: Any) -> Any:
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done


# --------------------------------------------------------------------------------------------------------
# the CLI beside a real `journeys up`
# --------------------------------------------------------------------------------------------------------


@pytest.fixture
def service(tmp_path: Path):  # type: ignore[no-untyped-def]
    running = Service(tmp_path, JOURNEYS_INSERT_LINGER_MS="20", JOURNEYS_KEY_CACHE_TTL_S=str(TTL)).start()
    try:
        yield running
    finally:
        running.stop()
        stop_leftover_postgres(tmp_path)


@pytest.mark.slow
def test_projects_and_keys_listed_used_and_revoked_through_the_cli(service: Service) -> None:
    data = service.data_dir
    demo = json.loads(_ok(journeys(data, "project", "create", "demo", "--json")).stdout)
    _ok(journeys(data, "project", "create", "other"))
    admin = _ok(journeys(data, "key", "create", "--project", "demo", "--kind", "admin")).stdout.strip()
    write, read = demo["write_key"], demo["read_key"]
    secrets = (write, read, admin)

    listed = json.loads(_ok(journeys(data, "project", "list", "--json")).stdout)["projects"]
    assert [(p["name"], p["active_keys"]) for p in listed] == [("demo", 3), ("other", 2)]
    assert listed[0]["id"] == demo["id"] and listed[0]["created_at"].endswith("Z")
    table = _ok(journeys(data, "project", "list")).stdout
    assert table.splitlines()[0].split() == ["NAME", "ID", "CREATED", "(UTC)", "ACTIVE", "KEYS"]
    assert demo["id"] in table and "other" in table

    keys = json.loads(_ok(journeys(data, "key", "list", "--project", "demo", "--json")).stdout)
    assert keys["project"] == demo["id"]
    assert [(k["prefix"], k["kind"], k["last_used_at"], k["revoked"]) for k in keys["keys"]] == [
        (write[:6], "write", None, False),
        (read[:6], "read", None, False),
        (admin[:6], "admin", None, False),
    ]

    # Used keys get a "last used" time (recorded when a service looks the key up); the admin key was not used.
    assert _track(service.collector, write) == 200
    assert call(service.query, "GET", "/v1/stats", headers=basic(read)).status == 200
    text = _ok(journeys(data, "key", "list", "--project", "demo")).stdout
    lines = {line.split()[0]: line for line in text.splitlines()[1:]}
    assert lines[admin[:6]].split()[-2:] == ["never", "no"]
    for key in (write, read):
        assert "never" not in lines[key[:6]] and lines[key[:6]].endswith(" no")
    for secret in secrets:
        assert secret[6:] not in text and secret[6:] not in json.dumps(keys)  # a prefix, never the secret

    # Revoke the write key by its prefix: the collector refuses it within the key-cache TTL.
    revoked = json.loads(_ok(journeys(data, "key", "revoke", write[:6], "--project", "demo", "--json")).stdout)
    assert revoked["already_revoked"] is False
    assert [(k["prefix"], k["kind"], k["revoked"]) for k in revoked["revoked"]] == [(write[:6], "write", True)]
    assert _refused_within(lambda: _track(service.collector, write), TTL + SLACK) <= TTL + SLACK
    reply = call(
        service.collector,
        "POST",
        "/v1/track",
        orjson.dumps({"userId": "u", "event": "E"}),
        {"Content-Type": "application/json", **basic(write)},
    )
    assert reply.status == 401 and "unknown or revoked key" in reply.errors()[0]["reason"]

    # And the read key, given whole (as a leaked key is found), with no --project: the query service too.
    done = _ok(journeys(data, "key", "revoke", read))
    assert done.stdout.startswith(f"revoked {read[:6]}  read key of demo")
    assert (
        _refused_within(lambda: call(service.query, "GET", "/v1/stats", headers=basic(read)).status, TTL + SLACK)
        <= TTL + SLACK
    )

    # Revoking again says so and changes nothing.
    again = _ok(journeys(data, "key", "revoke", write))
    assert again.stdout.startswith(f"already revoked: {write[:6]}  write key of demo")
    again_json = json.loads(_ok(journeys(data, "key", "revoke", write[:6], "--json")).stdout)
    assert again_json["already_revoked"] is True

    # An ambiguous prefix names the candidates and revokes nothing.
    public = _ok(journeys(data, "key", "create", "--project", "demo", "--kind", "public")).stdout.splitlines()[0]
    ambiguous = journeys(data, "key", "revoke", "j", "--project", "demo")
    assert ambiguous.returncode == 1
    assert "matches 2 keys that are not revoked" in ambiguous.stderr and "nothing was revoked" in ambiguous.stderr
    assert (
        f"{admin[:6]}  admin key of demo" in ambiguous.stderr
        and f"{public[:6]}  public key of demo" in ambiguous.stderr
    )
    as_json = journeys(data, "key", "revoke", "j", "--project", "demo", "--json")
    assert as_json.returncode == 1
    assert sorted(k["prefix"] for k in json.loads(as_json.stdout)["candidates"]) == sorted([admin[:6], public[:6]])
    assert _track(service.collector, public) in (200, 403)  # still a key (403: no origin allowed), never 401

    only_one = journeys(data, "key", "revoke", "jw_", "--project", "other")
    assert only_one.returncode == 0 and "write key of other" in only_one.stdout  # the one live match: revoked
    nothing = journeys(data, "key", "revoke", "jx")
    assert nothing.returncode == 1 and "no key starts with 'jx'" in nothing.stderr
    partial = journeys(data, "key", "revoke", admin[:12])
    assert partial.returncode == 1 and "whole key, or its prefix" in partial.stderr

    active = json.loads(_ok(journeys(data, "key", "list", "--project", "demo", "--active", "--json")).stdout)
    assert sorted(k["kind"] for k in active["keys"]) == ["admin", "public"]
    listed = json.loads(_ok(journeys(data, "project", "list", "--json")).stdout)["projects"]
    assert [(p["name"], p["active_keys"]) for p in listed] == [("demo", 2), ("other", 1)]


def test_the_sdk_reports_a_revoked_key(service: Service) -> None:
    from journeys_sdk import APIError, Client

    data = service.data_dir
    made = json.loads(_ok(journeys(data, "project", "create", "sdk", "--json")).stdout)
    client = Client(made["write_key"], host=service.collector, upload_interval=0.05)
    try:
        client.track("u", "Before")
        assert client.flush(timeout=30)
        _ok(journeys(data, "key", "revoke", made["write_key"]))
        time.sleep(TTL + 0.2)
        client.track("u", "After")
        flushed = client.flush(timeout=30)
    finally:
        client.shutdown(timeout=1)
    assert not flushed and flushed.failed == 1
    assert isinstance(flushed.last_error, APIError) and flushed.last_error.status == 401


# --------------------------------------------------------------------------------------------------------
# the admin API (in-process services on 127.0.0.1, the session's stores, a 1 s key cache)
# --------------------------------------------------------------------------------------------------------


@pytest.fixture
async def short_ttl(stores, tmp_path):  # type: ignore[no-untyped-def]
    from collector.app import create_app as create_collector
    from query.app import create_app as create_query

    fresh = dataclasses.replace(stores, keys=KeyResolver(stores.pg, ttl=TTL))
    collector = TestServer(
        create_collector(with_settings(fresh, spool_dir=tmp_path / "spool"), Metrics()), host="127.0.0.1"
    )
    query = TestServer(create_query(fresh, Metrics()), host="127.0.0.1")
    await collector.start_server()
    await query.start_server()
    try:
        yield collector, query
    finally:
        await query.close()
        await collector.close()


async def _json(http, method: str, url: Any, key: str, body: Any = None) -> tuple[int, Any, Any]:  # type: ignore[no-untyped-def]
    data = None if body is None else (body if isinstance(body, bytes) else orjson.dumps(body))
    async with http.request(method, url, data=data, headers={"Content-Type": "application/json", **basic(key)}) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_keys_over_the_admin_api(http, stores, project, short_ttl) -> None:  # type: ignore[no-untyped-def]
    collector, query = short_ttl
    async with stores.pg.acquire() as conn:
        admin = await add_key(conn, project.id, "admin")
        other = await create_project(conn, f"keys-other-{project.id}")
    url = query.make_url("/v1/keys")

    status, listing, _ = await _json(http, "GET", url, admin)
    assert status == 200 and listing["project"] == project.id
    assert [(k["prefix"], k["kind"], k["current"], k["revoked"]) for k in listing["keys"]] == [
        (project.write_key[:6], "write", False, False),
        (project.read_key[:6], "read", False, False),
        (admin[:6], "admin", True, False),
    ]

    status, made, headers = await _json(http, "POST", url, admin, {"kind": "write"})
    assert status == 201 and headers["Cache-Control"] == "no-store"
    secret = made["key"]
    assert secret.startswith("jw_") and made["prefix"] == secret[:6] and made["kind"] == "write" and not made["revoked"]
    status, listing, _ = await _json(http, "GET", url, admin)
    assert secret[:6] in [k["prefix"] for k in listing["keys"]] and secret[6:] not in json.dumps(listing)

    # The new key writes; revoked, it stops within the key-cache TTL.
    event = {"userId": "api-1", "event": "Keyed"}
    async with http.post(collector.make_url("/v1/track"), json=event, headers=basic(secret)) as resp:
        assert resp.status == 200
    status, body, _ = await _json(http, "DELETE", query.make_url(f"/v1/keys/{secret[:6]}"), admin)
    assert status == 200 and body["already_revoked"] is False and body["revoked"][0]["revoked"] is True
    began = time.monotonic()
    while True:
        async with http.post(collector.make_url("/v1/track"), json=event, headers=basic(secret)) as resp:
            if resp.status == 401:
                break
            assert resp.status == 200
        assert time.monotonic() - began < TTL + SLACK, "a revoked key still writes past the key-cache TTL"
        await _sleep(0.05)
    status, body, _ = await _json(http, "DELETE", query.make_url(f"/v1/keys/{secret[:6]}"), admin)
    assert status == 200 and body["already_revoked"] is True

    # An admin key cannot revoke itself (another admin key can).
    status, body, _ = await _json(http, "DELETE", query.make_url(f"/v1/keys/{admin[:6]}"), admin)
    assert status == 409 and "key making this request" in body["errors"][0]["reason"]
    assert (await _json(http, "GET", url, admin))[0] == 200

    # Two live keys with the same prefix: 409 naming both; nothing revoked.
    async with stores.pg.acquire() as conn:
        twins = [
            await add_key(conn, project.id, "read", "jr_Twn" + made_secret[6:])
            for made_secret in (project.read_key, project.write_key)
        ]
    status, body, _ = await _json(http, "DELETE", query.make_url("/v1/keys/jr_Twn"), admin)
    assert status == 409 and "2 live keys" in body["errors"][0]["reason"]
    for twin in twins:
        status, _, _ = await _json(http, "GET", query.make_url("/v1/stats"), twin)
        assert status == 200

    # Never a whole key in a URL; prefixes of other projects' keys are not found here.
    status, body, _ = await _json(http, "DELETE", query.make_url(f"/v1/keys/{project.read_key}"), admin)
    assert status == 400 and "never put one in a URL" in body["errors"][0]["reason"]
    for bad in ("jw_abcdefg", "%00", "a b"):
        assert (await _json(http, "DELETE", query.make_url(f"/v1/keys/{bad}"), admin))[0] == 400, bad
    status, _, _ = await _json(http, "DELETE", query.make_url(f"/v1/keys/{other.write_key[:6]}"), admin)
    assert status == 404
    async with http.post(collector.make_url("/v1/track"), json=event, headers=basic(other.write_key)) as resp:
        assert resp.status == 200  # untouched

    # Bodies other than {"kind": …} are refused, naming the field.
    for body, field in (
        ({}, "kind"),
        ({"kind": "root"}, "kind"),
        ({"kind": "write", "x": 1}, "x"),
        (b"not json", "body"),
        ([1], "body"),
    ):
        status, answer, _ = await _json(http, "POST", url, admin, body)
        assert status == 400 and answer["errors"][0]["field"] == field, (body, answer)

    # Admin keys only: a read key may not list or make keys.
    for method, body in (("GET", None), ("POST", {"kind": "admin"})):
        status, answer, _ = await _json(http, method, url, project.read_key, body)
        assert status == 403 and "admin key" in answer["errors"][0]["reason"]


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


# --------------------------------------------------------------------------------------------------------
# "last used" costs at most one write per key per minute, even with no key cache at all
# --------------------------------------------------------------------------------------------------------


async def test_last_used_is_written_at_most_once_a_minute_per_key(stores, project) -> None:  # type: ignore[no-untyped-def]
    resolver = KeyResolver(stores.pg, ttl=0)  # every request a lookup
    row_sql = "SELECT last_used_at, xmin::text AS version FROM api_keys WHERE prefix = $1 AND project_id = $2"
    assert (await stores.pg.fetchrow(row_sql, project.write_key[:6], project.id))["last_used_at"] is None
    assert await resolver.resolve(project.write_key) is not None
    first = await stores.pg.fetchrow(row_sql, project.write_key[:6], project.id)
    assert first["last_used_at"] is not None
    for _ in range(50):
        assert await resolver.resolve(project.write_key) is not None
    after = await stores.pg.fetchrow(row_sql, project.write_key[:6], project.id)
    assert (after["last_used_at"], after["version"]) == (first["last_used_at"], first["version"])  # no new row version

    # Over a minute later the next lookup records the use again (once).
    await stores.pg.execute(
        "UPDATE api_keys SET last_used_at = now() - interval '61 seconds' WHERE prefix = $1 AND project_id = $2",
        project.write_key[:6],
        project.id,
    )
    stale = await stores.pg.fetchrow(row_sql, project.write_key[:6], project.id)
    await resolver.resolve(project.write_key)
    fresh = await stores.pg.fetchrow(row_sql, project.write_key[:6], project.id)
    assert fresh["last_used_at"] > stale["last_used_at"] and fresh["version"] != stale["version"]
    # The read key was never looked up: never used.
    assert (await stores.pg.fetchrow(row_sql, project.read_key[:6], project.id))["last_used_at"] is None
