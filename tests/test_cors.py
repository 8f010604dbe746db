"""Public (browser) keys, allowed origins and CORS on the collector, over real HTTP with real PostgreSQL
and chDB. The browser itself is in tests/test_tracker.py; here every header is checked one by one."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from collector.appkeys import ORIGINS
from journeys.keys import add_key
from collector.origins import OriginError, change_origins, normalize_origin
from testkit.service import journeys, stop_leftover_postgres
from support import basic, stored_rows, wait_drained, wait_stored

SHOP = "https://shop.example"
OTHER = "https://evil.example"


async def public_key(stores, project, *origins: str) -> str:  # type: ignore[no-untyped-def]
    async with stores.pg.acquire() as conn:
        key = await add_key(conn, project.id, "public")
        await change_origins(conn, project.id, [normalize_origin(o) for o in origins])
    return key


def beacon_body(key: str, event: str = "Clicked", **extra: object) -> bytes:
    """What the tracker's sendBeacon sends: text/plain, the key in the body."""
    return orjson.dumps(
        {"batch": [{"type": "track", "event": event, "anonymousId": "a-1", "channel": "web", **extra}], "writeKey": key}
    )


async def post(http, collector, body: bytes, origin: str | None, headers=None):  # type: ignore[no-untyped-def]
    sent = {"Content-Type": "text/plain;charset=UTF-8", **({"Origin": origin} if origin else {}), **(headers or {})}
    async with http.post(collector.make_url("/v1/batch"), data=body, headers=sent) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_public_key_from_a_listed_origin_writes_and_may_read_the_answer(http, collector, stores, project) -> None:  # type: ignore[no-untyped-def]
    key = await public_key(stores, project, SHOP)
    page = {"url": "https://shop.example/p?utm_source=news&utm_campaign=spring", "referrer": "https://search.example/"}
    status, body, headers = await post(
        http, collector, beacon_body(key, context={"page": page, "campaign": {"medium": "email"}}), SHOP
    )
    assert status == 200, body
    assert headers["Access-Control-Allow-Origin"] == SHOP
    assert "Origin" in headers.getall("Vary")
    assert "Retry-After" in headers["Access-Control-Expose-Headers"]
    assert "Access-Control-Allow-Credentials" not in headers
    await wait_stored(stores, project.id, 1)
    _, rows = await stores.clickhouse.query(
        "SELECT page_url, referrer, utm_source, utm_medium, utm_campaign, channel FROM events WHERE project_id = {p:String}",
        {"p": project.id},
    )
    assert rows == [(page["url"], page["referrer"], "news", "email", "spring", "web")]


async def test_public_key_from_another_origin_is_refused_naming_origin_and_nothing_is_stored(  # type: ignore[no-untyped-def]
    http, collector, stores, project
) -> None:
    key = await public_key(stores, project, SHOP)
    for origin, words in ((OTHER, "not among"), (None, "no Origin header"), ("null", "null")):
        status, body, headers = await post(http, collector, beacon_body(key, "Refused"), origin)
        assert status == 403, (origin, body)
        [error] = body["errors"]
        assert error["field"] == "Origin" and words in error["reason"], error
        assert "Access-Control-Allow-Origin" not in headers
    # The same request from the listed origin goes through: the refusals above were about the origin only.
    status, body, _ = await post(http, collector, beacon_body(key, "Allowed"), SHOP)
    assert status == 200, body
    await wait_drained(collector)
    _, rows = await stores.clickhouse.query("SELECT event FROM events WHERE project_id = {p:String}", {"p": project.id})
    assert rows == [("Allowed",)]


async def test_an_origin_differently_spelled_matches_and_a_project_without_origins_refuses(  # type: ignore[no-untyped-def]
    http, collector, stores, project
) -> None:
    key = await public_key(stores, project, "HTTPS://Shop.Example:443/")
    status, body, headers = await post(http, collector, beacon_body(key), "https://SHOP.example")
    assert status == 200, body
    assert headers["Access-Control-Allow-Origin"] == "https://SHOP.example"
    async with stores.pg.acquire() as conn:
        await change_origins(conn, project.id, remove=[SHOP])
    collector.app[ORIGINS].invalidate()  # what JOURNEYS_KEY_CACHE_TTL_S does by itself
    status, body, _ = await post(http, collector, beacon_body(key), SHOP)
    assert status == 403 and "lists no origins" in body["errors"][0]["reason"], body


async def test_write_keys_are_not_limited_by_origin(http, collector, stores, project) -> None:  # type: ignore[no-untyped-def]
    await public_key(stores, project, SHOP)
    status, body, headers = await post(http, collector, beacon_body(project.write_key), OTHER)
    assert status == 200, body
    assert "Access-Control-Allow-Origin" not in headers  # accepted, but that page may not read the answer
    status, body, headers = await post(http, collector, b'{"batch":[]}', SHOP, basic(project.write_key))
    assert status == 400 and headers["Access-Control-Allow-Origin"] == SHOP  # errors readable by listed pages
    status, _, headers = await post(http, collector, beacon_body(project.write_key), None)
    assert status == 200 and "Access-Control-Allow-Origin" not in headers and "Vary" not in headers


async def test_preflight_answers_origins_some_project_lists_and_the_post_checks_its_own_project(  # type: ignore[no-untyped-def]
    http, collector, stores, project
) -> None:
    from journeys.keys import create_project

    async with stores.pg.acquire() as conn:
        other = await create_project(conn, f"cors-other-{project.id}")
    await public_key(stores, other, OTHER)  # OTHER is listed by another project only
    key = await public_key(stores, project, SHOP)
    asks = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    for origin in (SHOP, OTHER):
        async with http.options(collector.make_url("/v1/track"), headers={"Origin": origin, **asks}) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == origin
            assert resp.headers["Access-Control-Allow-Methods"] == "POST"
            allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
            assert {"authorization", "content-type", "content-encoding"} <= allowed
            assert int(resp.headers["Access-Control-Max-Age"]) > 0
            assert "Origin" in resp.headers.getall("Vary")
    async with http.options(
        collector.make_url("/v1/batch"), headers={"Origin": "https://unknown.example", **asks}
    ) as resp:
        assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
        assert (await resp.json())["errors"][0]["field"] == "Origin"
    async with http.options(collector.make_url("/v1/batch")) as resp:  # not CORS at all
        assert resp.status == 204 and "POST" in resp.headers["Allow"]
    # The preflight let OTHER through (another project lists it); this key's project does not.
    status, body, headers = await post(
        http,
        collector,
        orjson.dumps({"event": "x", "anonymousId": "a"}),
        OTHER,
        {**basic(key), "Content-Type": "application/json"},
    )
    assert status == 403 and body["errors"][0]["field"] == "Origin"
    assert "Access-Control-Allow-Origin" not in headers
    assert await stored_rows(stores, project.id) == 0


async def test_a_public_key_cannot_read(http, query, stores, project) -> None:  # type: ignore[no-untyped-def]
    key = await public_key(stores, project, SHOP)
    async with http.get(query.make_url("/v1/customers/a-1/events"), headers=basic(key)) as resp:
        assert resp.status == 403
        assert "public key cannot read" in (await resp.json())["errors"][0]["reason"]


@pytest.mark.parametrize(
    "given,expected",
    [
        ("https://shop.example", "https://shop.example"),
        ("HTTPS://Shop.Example:443/", "https://shop.example"),
        ("http://shop.example:80", "http://shop.example"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("https://[::1]:8443", "https://[::1]:8443"),
        ("https://bücher.example", "https://xn--bcher-kva.example"),
        ("  https://www.shop.example  ", "https://www.shop.example"),
    ],
)
def test_normalize_origin_gives_what_browsers_send(given: str, expected: str) -> None:
    assert normalize_origin(given) == expected


@pytest.mark.parametrize(
    "given,words",
    [
        ("null", "sandboxed"),
        ("*", "wildcards"),
        ("https://*.shop.example", "wildcards"),
        ("shop.example", "http:// or https://"),
        ("ftp://shop.example", "http:// or https://"),
        ("https://shop.example/path", "no path"),
        ("https://shop.example?x=1", "no path"),
        ("https://user:pw@shop.example", "user name"),
        ("https://", "missing host"),
        ("https://shop.example:99999", "not a URL origin"),
        ("https://sh op.example", "invalid host"),
        ("", "1-300"),
    ],
)
def test_normalize_origin_refuses_what_is_not_an_origin(given: str, words: str) -> None:
    with pytest.raises(OriginError, match=words.replace("*", r"\*").replace("?", r"\?")):
        normalize_origin(given)


@pytest.fixture
def cli_dir(tmp_path: Path):  # type: ignore[no-untyped-def]
    yield tmp_path
    stop_leftover_postgres(tmp_path)


def test_cli_creates_public_keys_and_edits_origins(cli_dir: Path) -> None:
    assert journeys(cli_dir, "project", "create", "web").returncode == 0
    made = journeys(cli_dir, "key", "create", "--project", "web", "--kind", "public")
    assert made.returncode == 0 and made.stdout.startswith("jp_") and "project origins" in made.stderr
    empty = journeys(cli_dir, "project", "origins", "web")
    assert empty.returncode == 0 and empty.stdout == "" and "cannot send events from any web page" in empty.stderr
    added = journeys(
        cli_dir, "project", "origins", "web", "--add", "https://Shop.example/", "--add", "http://127.0.0.1:3000"
    )
    assert added.returncode == 0, added.stderr
    assert added.stdout.split() == ["http://127.0.0.1:3000", "https://shop.example"]
    bad = journeys(
        cli_dir, "project", "origins", "web", "--add", "https://ok.example", "--add", "https://x.example/path"
    )
    assert bad.returncode == 2 and "https://x.example/path" in bad.stderr and "no path" in bad.stderr
    after = journeys(cli_dir, "project", "origins", "web", "--remove", "http://127.0.0.1:3000", "--json")
    assert after.returncode == 0, after.stderr
    listed = orjson.loads(after.stdout)
    assert listed["origins"] == ["https://shop.example"] and listed["project"].startswith(
        "p_"
    )  # bad run changed nothing
    missing = journeys(cli_dir, "project", "origins", "nope", "--add", "https://a.example")
    assert missing.returncode == 1 and "no project named" in missing.stderr
