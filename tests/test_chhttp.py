"""testkit/chhttp.py: a ClickHouse HTTP interface in front of chDB, driven by the real clickhouse-connect clients."""

from __future__ import annotations

import asyncio
import gzip
from datetime import timezone
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import clickhouse_connect
import pytest
from clickhouse_connect.driver.asyncclient import AsyncClient
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from testkit.chhttp import ClickHouseHTTP, analyze

USER = "tester"
PASSWORD = "s3cr:t p@ss/wörd"  # exercises DSN quoting
ROWS = 3000
BASE_MS = 1_700_000_000_000

DDL = """
CREATE TABLE IF NOT EXISTS chhttp.events (
    project String,
    kind LowCardinality(String),
    ts DateTime64(3, 'UTC'),
    done Nullable(DateTime64(3, 'UTC')),
    n UInt32
) ENGINE = MergeTree ORDER BY (project, ts)
"""
COLUMNS = ["project", "kind", "ts", "done", "n"]


def _columns(count: int, project: str = "p") -> list[list]:
    return [
        [f"{project}{i % 7}" for i in range(count)],
        [("view", "click", "buy")[i % 3] for i in range(count)],
        [BASE_MS + i for i in range(count)],  # int epoch-ms ticks
        [None if i % 2 else BASE_MS + 2 * i for i in range(count)],
        list(range(count)),
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseHTTP]:
    srv = ClickHouseHTTP(tmp_path_factory.mktemp("chhttp") / "data", user=USER, password=PASSWORD)
    with srv:
        yield srv


@pytest.fixture(scope="module")
async def client(server: ClickHouseHTTP) -> AsyncIterator[AsyncClient]:
    c = await clickhouse_connect.get_async_client(dsn=server.url)
    await c.command("CREATE DATABASE IF NOT EXISTS chhttp")
    await c.command(DDL)
    await c.insert("chhttp.events", _columns(ROWS), column_names=COLUMNS, column_oriented=True)
    yield c
    await c.close()


def _http(
    server: ClickHouseHTTP,
    method: str = "POST",
    body: bytes | None = None,
    auth: bool = True,
    headers: dict | None = None,
    **params: str,
) -> tuple[int, Any, bytes]:
    """A bare HTTP request (no clickhouse-connect): returns (status, headers, body)."""
    headers = dict(headers or {})
    if auth:
        headers.update({"X-ClickHouse-User": USER, "X-ClickHouse-Key": PASSWORD.encode()})  # UTF-8 bytes
    req = urllib.request.Request(f"{server.base_url}/?{urlencode(params)}", data=body, method=method, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


# ---------------------------------------------------------------------------------------------------------------
# the async client
# ---------------------------------------------------------------------------------------------------------------


async def test_async_connect_and_insert(server: ClickHouseHTTP, client: AsyncClient) -> None:
    assert server.url.startswith(f"http://{USER}:") and server.url.endswith(f"127.0.0.1:{server.port}/default")
    assert client.server_version and client.server_version.count(".") == 3
    assert await client.command("SELECT currentDatabase()") == "default"
    result = await client.query(
        "SELECT count(), countIf(done IS NULL), min(ts), max(ts), uniqExact(kind), toTypeName(kind), sum(n) FROM chhttp.events"
    )
    count, nulls, min_ts, max_ts, kinds, kind_type, total = result.result_rows[0]
    assert (count, nulls, kinds, kind_type, total) == (
        ROWS,
        ROWS // 2,
        3,
        "LowCardinality(String)",
        ROWS * (ROWS - 1) // 2,
    )
    # clickhouse-connect hands back UTC values as naive datetimes by default
    min_ts, max_ts = (v.replace(tzinfo=timezone.utc) if v.tzinfo is None else v for v in (min_ts, max_ts))
    assert int(min_ts.timestamp() * 1000) == BASE_MS and int(max_ts.timestamp() * 1000) == BASE_MS + ROWS - 1
    rows = (await client.query("SELECT done FROM chhttp.events WHERE n IN (2, 3) ORDER BY n")).result_rows
    assert rows[1] == (None,) and rows[0][0].replace(tzinfo=timezone.utc).timestamp() * 1000 == BASE_MS + 4


async def test_async_bound_parameters(client: AsyncClient) -> None:
    tricky = ["it's", 'say "hi"', "{brace}", "{x:String}", "back\\slash", "tab\there\nnewline", "ünïcødé"]
    await client.command("CREATE TABLE IF NOT EXISTS chhttp.strings (s String) ENGINE = MergeTree ORDER BY s")
    await client.insert("chhttp.strings", [tricky], column_names=["s"], column_oriented=True)
    for value in tricky:
        got = await client.query(
            "SELECT {v:String} AS v, count() FROM chhttp.strings WHERE s = {v:String}", parameters={"v": value}
        )
        assert got.result_rows == [(value, 1)]
    got = await client.query(
        "SELECT s FROM chhttp.strings WHERE s IN {vals:Array(String)} AND length(s) > {min:UInt32} ORDER BY s",
        parameters={"vals": tricky[:4] + ["absent"], "min": 3},
    )
    assert sorted(r[0] for r in got.result_rows) == sorted(v for v in tricky[:4] if len(v) > 3)
    # parameters too long for the URL travel as a multipart form
    long_value = "{'x'}" * 4000
    got = await client.query(
        "SELECT length({v:String}), {v:String} = repeat({unit:String}, 4000)",
        parameters={"v": long_value, "unit": "{'x'}"},
    )
    assert got.result_rows == [(len(long_value), True)]


async def test_async_limit_by_and_parameters_on_events(client: AsyncClient) -> None:
    got = await client.query(
        """
        SELECT project, kind, n FROM chhttp.events
        WHERE project IN {projects:Array(String)} AND n < {upto:UInt32}
        ORDER BY project, n DESC
        LIMIT 1 BY project
        """,
        parameters={"projects": ["p1", "p2", "p'{x}"], "upto": 100},
    )
    assert got.column_names == ("project", "kind", "n")
    assert got.result_rows == [("p1", "view", 99), ("p2", "view", 93)]


async def test_async_errors_raise_database_error(client: AsyncClient) -> None:
    with pytest.raises(DatabaseError) as syntax:
        await client.query("SELEC 1")
    assert syntax.value.code == 62 and "Syntax error" in str(syntax.value) and "SYNTAX_ERROR" in str(syntax.value)
    with pytest.raises(DatabaseError) as missing:
        await client.command("SELECT * FROM chhttp.no_such_table")
    assert missing.value.code == 60 and "UNKNOWN_TABLE" in str(missing.value)
    with pytest.raises(DatabaseError) as setting:
        await client.query("SELECT 1", settings={"no_such_setting_xyz": 1})
    assert setting.value.code == 115
    with pytest.raises(DatabaseError) as bad_insert:
        await client.insert("chhttp.events", [["x"], [1]], column_names=["project", "nope"], column_oriented=True)
    assert "nope" in str(bad_insert.value)
    assert await client.command("SELECT 41 + 1") == 42  # the client is fine afterwards


async def test_async_command_shapes_and_settings(client: AsyncClient) -> None:
    assert await client.command("SELECT 1, 'a'") == ["1", "a"]
    assert await client.command("SELECT 1 WHERE 0") == ""  # a result set, empty
    summary = await client.command("CREATE TABLE IF NOT EXISTS chhttp.t2 (a UInt8) ENGINE = Memory")
    assert not isinstance(summary, (str, int, list))  # DDL answers a QuerySummary
    assert await client.command("SELECT getSetting('max_threads')", settings={"max_threads": 3}) == 3
    # no session: a SET statement changes nothing for later requests, as with ClickHouse
    await client.command("SET max_threads = 5")
    assert await client.command("SELECT getSetting('max_threads')") != 5
    raw = await client.raw_query("SELECT number FROM numbers(3) FORMAT JSONEachRow")
    assert raw == b'{"number":0}\n{"number":1}\n{"number":2}\n'
    summary = await client.insert("chhttp.t2", [[1, 2, 3]], column_names=["a"], column_oriented=True)
    assert summary.written_rows == 3


@pytest.mark.parametrize("compress", [False, "lz4", "zstd", "gzip"])
async def test_async_compression_variants(server: ClickHouseHTTP, client: AsyncClient, compress: str | bool) -> None:
    c = await clickhouse_connect.get_async_client(dsn=server.url, compress=compress)
    try:
        table = f"chhttp.comp_{compress or 'none'}"
        await c.command(f"CREATE TABLE IF NOT EXISTS {table} (s String, n UInt32) ENGINE = MergeTree ORDER BY n")
        await c.command(f"TRUNCATE TABLE {table}")
        await c.insert(
            table,
            [["x" * (i % 50) for i in range(2000)], list(range(2000))],
            column_names=["s", "n"],
            column_oriented=True,
        )
        got = await c.query(f"SELECT s, n FROM {table} ORDER BY n")
        assert len(got.result_rows) == 2000 and got.result_rows[51] == ("x", 51)
    finally:
        await c.close()


async def test_async_concurrent_queries(client: AsyncClient) -> None:
    results = await asyncio.gather(
        *(
            client.query("SELECT count() FROM chhttp.events WHERE n % 10 = {r:UInt32}", parameters={"r": r})
            for r in range(10)
        )
    )
    assert [res.result_rows[0][0] for res in results] == [ROWS // 10] * 10


async def test_database_from_dsn_and_bad_credentials(server: ClickHouseHTTP, client: AsyncClient) -> None:
    c = await clickhouse_connect.get_async_client(dsn=server.url.rsplit("/", 1)[0] + "/chhttp")
    try:
        assert await c.command("SELECT count() FROM events") == ROWS
    finally:
        await c.close()
    with pytest.raises(DatabaseError) as auth:
        await clickhouse_connect.get_async_client(host="127.0.0.1", port=server.port, username=USER, password="wrong")
    assert auth.value.code == 516
    with pytest.raises(DatabaseError) as db:
        await clickhouse_connect.get_async_client(dsn=server.url.rsplit("/", 1)[0] + "/no_such_db")
    assert db.value.code == 81


# ---------------------------------------------------------------------------------------------------------------
# the sync client and the bare HTTP interface
# ---------------------------------------------------------------------------------------------------------------


def test_sync_client(server: ClickHouseHTTP, client: AsyncClient) -> None:
    c = clickhouse_connect.get_client(dsn=server.url)
    try:
        c.command("CREATE TABLE IF NOT EXISTS chhttp.sync (s String, n UInt32) ENGINE = MergeTree ORDER BY n")
        c.insert("chhttp.sync", [["a'b", "{c}"], [1, 2]], column_names=["s", "n"], column_oriented=True)
        got = c.query("SELECT s FROM chhttp.sync WHERE n = {n:UInt32}", parameters={"n": 2})
        assert got.result_rows == [("{c}",)]
        assert c.command("SELECT count() FROM chhttp.events") == ROWS
        # the sync client has a session: SET sticks for it
        c.command("SET max_threads = 3")
        assert c.command("SELECT getSetting('max_threads')") == 3
        with pytest.raises(DatabaseError) as err:
            c.query("SELECT broken(")
        assert err.value.code == 62
    finally:
        c.close()


def test_bare_http_interface(server: ClickHouseHTTP, client: AsyncClient) -> None:
    assert server.ping()
    status, headers, body = _http(server, "GET", query="SELECT 1 + {a:UInt8}", param_a="2")
    assert (status, body, headers["X-ClickHouse-Format"]) == (200, b"3\n", "TabSeparated")
    assert headers["X-ClickHouse-Timezone"] == "UTC" and headers["X-ClickHouse-Query-Id"]
    status, headers, body = _http(server, body=b"SELEC 1")
    assert status == 400 and headers["X-ClickHouse-Exception-Code"] == "62"
    assert body.startswith(b"Code: 62. DB::Exception: Syntax error") and b"(SYNTAX_ERROR) (version " in body
    status, headers, _ = _http(server, body=b"SELECT * FROM nowhere_table")
    assert status == 404 and headers["X-ClickHouse-Exception-Code"] == "60"
    status, headers, _ = _http(server, body=b"SELECT 1", auth=False)
    assert status == 403 and headers["X-ClickHouse-Exception-Code"] == "516"
    # GET is readonly, as in ClickHouse
    status, headers, _ = _http(server, "GET", query="CREATE TABLE chhttp.ro (a UInt8) ENGINE = Memory")
    assert status == 500 and headers["X-ClickHouse-Exception-Code"] == "164"
    # query parameter + body: INSERT data in the body
    status, headers, _ = _http(server, body=b"1\n2\n", query="INSERT INTO chhttp.t2 FORMAT TSV")
    assert status == 200 and '"written_rows":"2"' in headers["X-ClickHouse-Summary"]
    status, _, body = _http(server, query="SELECT count() FROM chhttp.t2 WHERE a IN (1, 2) FORMAT JSONEachRow")
    assert body.startswith(b'{"count()":')
    # compressed request bodies and responses
    status, headers, body = _http(
        server,
        body=gzip.compress(b"SELECT 'zipped'"),
        enable_http_compression="1",
        headers={"Content-Encoding": "gzip", "Accept-Encoding": "zstd, gzip"},
    )
    assert (status, headers["Content-Encoding"], gzip.decompress(body)) == (200, "gzip", b"zipped\n")


def test_analyze_finds_insert_data_and_formats() -> None:
    stmt = analyze(b"INSERT INTO t (a, `format`) SETTINGS x = 'FORMAT Native' FORMAT Native\n\x00\x01FORMAT")
    assert stmt.kind == "insert_data" and stmt.insert_format == "Native" and stmt.data == b"\x00\x01FORMAT"
    assert stmt.sql[stmt.settings_at :].startswith(b"SETTINGS")
    assert analyze(b"INSERT INTO t VALUES ('FORMAT JSON')").kind == "query"
    assert analyze(b"SELECT format FROM t").output_format is None
    assert analyze(b"SELECT 1 -- FORMAT JSON\n FORMAT Native").output_format == "Native"
    assert analyze(b"SELECT 1 FORMAT JSON SETTINGS max_threads = 1").output_format == "JSON"


# ---------------------------------------------------------------------------------------------------------------
# outages
# ---------------------------------------------------------------------------------------------------------------


async def test_stop_start_same_client_recovers(tmp_path: Path) -> None:
    with ClickHouseHTTP(tmp_path / "data") as srv:
        url, port = srv.url, srv.port
        c = await clickhouse_connect.get_async_client(dsn=url)  # default retries
        try:
            await c.command("CREATE TABLE IF NOT EXISTS kept (n UInt32) ENGINE = MergeTree ORDER BY n")
            await c.insert("kept", [list(range(100))], column_names=["n"], column_oriented=True)

            srv.stop()
            assert not srv.running and not srv.ping()
            with pytest.raises(OperationalError) as down:
                await c.query("SELECT count() FROM kept")
            assert "Network Error" in str(down.value)
            with pytest.raises(OperationalError):
                await c.insert("kept", [[1000]], column_names=["n"], column_oriented=True)
            assert not await c.ping()

            srv.start()
            assert (srv.url, srv.port) == (url, port)
            assert await c.ping()
            assert await c.command("SELECT count() FROM kept") == 100  # same client object, data kept
            await c.insert("kept", [[100]], column_names=["n"], column_oriented=True)

            srv.kill()  # a crash: acknowledged inserts survive
            with pytest.raises(OperationalError):
                await c.command("SELECT 1")
            srv.start()
            assert await c.command("SELECT count() FROM kept") == 101
        finally:
            await c.close()


async def test_paused_server_times_out_then_recovers(tmp_path: Path) -> None:
    with ClickHouseHTTP(tmp_path / "data") as srv:
        c = await clickhouse_connect.get_async_client(dsn=srv.url, send_receive_timeout=1)
        try:
            assert await c.command("SELECT 1") == 1
            srv.pause()
            with pytest.raises(OperationalError):
                await c.command("SELECT 2")
            srv.resume()
            assert await c.command("SELECT 3") == 3
        finally:
            await c.close()
