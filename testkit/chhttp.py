#!/usr/bin/env python3
"""A small ClickHouse-HTTP-compatible test server backed by chDB.

chDB is the real ClickHouse engine running in-process, so SQL, types, the
Native format, bound ``{name:Type}`` parameters and error messages are
ClickHouse's own.  This module puts enough of ClickHouse's HTTP interface in
front of it for ``clickhouse-connect`` (``get_client`` and
``get_async_client`` with ``interface="http"``) to work unchanged, which lets
tests drive the real HTTP client paths with no ClickHouse server installed,
and simulate outages by stopping, killing or pausing the server process.

Run the server (one process owns one chDB data directory), from the repository root::

    python -m testkit.chhttp --data DIR --port PORT [--user U --password P]

Use it from tests::

    server = ClickHouseHTTP(tmp_path / "ch").start()
    client = await clickhouse_connect.get_async_client(dsn=server.url)
    server.set_insert_delay(2.0)  # slow server: every INSERT waits 2 s (0 turns it off)
    server.stop()        # outage: the next call raises OperationalError
    server.start()       # same port, same data: the same client recovers
    server.close()

``server.url`` has the shape ``http://USER:PASSWORD@127.0.0.1:PORT/DATABASE``,
which clickhouse-connect parses as interface, credentials, host, port and
database.

What is implemented of the HTTP interface
-----------------------------------------
* ``GET /ping`` and ``GET /`` without a query answer ``Ok.``; every other path
  is the query handler, as with ClickHouse's default handlers.
* The query is the ``query`` URL parameter, followed by a newline and the
  request body, or the body alone; multipart forms (``query`` and
  ``param_*`` fields) are accepted too.  ``INSERT ... FORMAT F`` takes its
  data from what follows the format name (the body), which is fed to chDB
  with ``INSERT ... FROM INFILE tmpfile FORMAT F``, the approach of
  clickhouse-connect's own chdb backend.
* ``param_NAME`` URL parameters are bound server-side (chDB ``params``).
* ``database`` (or ``X-ClickHouse-Database``), ``default_format`` (or
  ``X-ClickHouse-Format``), ``query_id`` (or ``X-ClickHouse-Query-Id``),
  ``session_id``/``session_timeout``/``session_check``; every other URL
  parameter is a setting, applied with ``SET`` (unknown settings fail as in
  ClickHouse, with code 115).  HTTP-transport-only parameters
  (``wait_end_of_query``, ``send_progress_in_http_headers``, ...) are
  accepted and ignored.  GET requests run with ``readonly=2``.
* Request bodies with ``Content-Encoding`` gzip, deflate, zstd, lz4 (frames,
  concatenated or not) and br (when brotli is installed) are decompressed;
  clickhouse-connect's default insert compression (lz4) works as is.
  Responses are compressed when ``enable_http_compression`` is on and the
  ``Accept-Encoding`` has a method we support (preference br, gzip, deflate,
  zstd, lz4, like ClickHouse).  chDB's default for that setting is 1, so
  clickhouse-connect (which reads ``system.settings`` on connect) does not
  send it and gets gzip responses by default; ``compress="lz4"``/``"zstd"``
  exercise its other decoders, ``compress=False`` turns compression off.
* Authentication: HTTP Basic, ``X-ClickHouse-User``/``X-ClickHouse-Key``
  headers or ``user``/``password`` URL parameters, checked against the one
  configured user (``--user``/``--password``, default ``default`` with an
  empty password).  Failures are ClickHouse's code 516, HTTP 403.
* Errors are returned the way ClickHouse returns them: the HTTP status that
  ClickHouse maps the exception code to (400/403/404/500/...), an
  ``X-ClickHouse-Exception-Code`` header and a
  ``Code: N. DB::Exception: ... (NAME) (version V (chdb))`` body.
* Response headers: ``X-ClickHouse-Query-Id``, ``X-ClickHouse-Summary``,
  ``X-ClickHouse-Timezone``, ``X-ClickHouse-Format`` (for statements that
  produce a result), ``X-ClickHouse-Server-Display-Name``,
  ``X-ClickHouse-Session-Id``.

Limitations (by design, this is a test double)
----------------------------------------------
* Results are materialised in memory before they are sent, and there are no
  progress headers and no mid-stream exceptions (a failing query fails
  before any byte is sent).  A running chDB query is not cancelled when the
  client goes away.
* ``client_protocol_version`` is ignored (no block-info prefix), so
  clickhouse-connect's protocol probe settles on version 0, the behaviour of
  ClickHouse servers and proxies that drop the parameter.
* ClickHouse's own ``compress=1``/``decompress=1`` block framing and
  external data (file parts of a multipart form) answer NOT_IMPLEMENTED.
* Without a session, ``SET``/``USE`` statements run on a throw-away
  connection (they change nothing, as in ClickHouse).  With a session the
  ``database`` parameter is sticky for the session and URL settings are
  applied to the session (and reset when a later request omits them).
* Setting defaults are chDB's (e.g. ``enable_http_compression=1``,
  ``date_time_input_format=best_effort``), as ``system.settings`` shows.
* One user; no grants, quotas or roles.  Listens on 127.0.0.1 only.

What clickhouse-connect 1.12 sends on connect (async and sync alike): POST
``SELECT version(), timezone()`` (no database), then ``SELECT name, value,
readonly FROM system.settings LIMIT 10000 FORMAT Native`` and the protocol
probe ``SELECT 1 AS check FORMAT Native`` with ``client_protocol_version``,
both with ``database=``; later requests carry ``date_time_input_format``,
``cast_string_to_dynamic_use_inference``,
``cancel_http_readonly_queries_on_client_close``,
``send_progress_in_http_headers``, ``http_headers_progress_interval_ms``,
``query_id``, ``wait_end_of_query`` and Basic auth.  The sync client also
sends an autogenerated ``session_id``; the async client does not.

The helper writes the server's output to ``DIR.chhttp.log`` next to the data
directory and stages INSERT payloads in ``DIR.chhttp-tmp``.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import binascii
import gzip
import hmac
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import weakref
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from testkit.net import HOST, free_port

if TYPE_CHECKING:
    from aiohttp import web  # the server half imports it when it runs; the test helper needs none of it

# ---------------------------------------------------------------------------
# ClickHouse error codes and their HTTP statuses
# (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp)
# ---------------------------------------------------------------------------

NOT_IMPLEMENTED = 48
UNKNOWN_EXCEPTION = 1002
AUTHENTICATION_FAILED = 516
SESSION_NOT_FOUND = 372
SESSION_IS_LOCKED = 373
CANNOT_DECOMPRESS = 271
BAD_ARGUMENTS = 36
HTTP_MAX_FIELD_VALUE_SIZE = 128 * 1024  # ClickHouse's default http_max_field_value_size
SYNTAX_ERROR = 62

_ERROR_NAMES = {
    NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    UNKNOWN_EXCEPTION: "UNKNOWN_EXCEPTION",
    AUTHENTICATION_FAILED: "AUTHENTICATION_FAILED",
    SESSION_NOT_FOUND: "SESSION_NOT_FOUND",
    SESSION_IS_LOCKED: "SESSION_IS_LOCKED",
    CANNOT_DECOMPRESS: "CANNOT_DECOMPRESS",
    BAD_ARGUMENTS: "BAD_ARGUMENTS",
    SYNTAX_ERROR: "SYNTAX_ERROR",
}

_STATUS_401 = {194}  # REQUIRED_PASSWORD
_STATUS_403 = {
    192,
    193,
    516,
    512,
    497,
}  # UNKNOWN_USER, WRONG_PASSWORD, AUTHENTICATION_FAILED, SET_NON_GRANTED_ROLE, ACCESS_DENIED
_STATUS_400 = {
    36,
    427,
    6,
    25,
    26,
    38,
    41,
    72,
    441,
    675,
    676,
    27,
    376,
    15,
    44,
    37,
    123,
    8,
    167,
    168,
    223,
    62,
    117,
    53,
    321,
}
_STATUS_404 = {60, 46, 47, 50, 56, 81, 115, 152, 63, 73, 336, 78, 511}
_STATUS_OTHER = {229: 413, 48: 501, 209: 503, 76: 503, 381: 411, 159: 408, 439: 503, 779: 415}


def http_status_for(code: int) -> int:
    if code in _STATUS_401:
        return 401
    if code in _STATUS_403:
        return 403
    if code in _STATUS_400:
        return 400
    if code in _STATUS_404:
        return 404
    return _STATUS_OTHER.get(code, 500)


class CHError(Exception):
    """A ClickHouse exception: numeric code and the ``Code: N. DB::Exception: ...`` text."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def new(cls, code: int, text: str) -> CHError:
        name = _ERROR_NAMES.get(code, "UNKNOWN_EXCEPTION")
        return cls(code, f"Code: {code}. DB::Exception: {text}. ({name})")

    @classmethod
    def from_chdb(cls, ex: BaseException) -> CHError:
        text = str(ex).strip()
        idx = text.find("Code: ")
        if idx > 0:
            text = text[idx:]
        m = re.match(r"Code:\s*(\d+)", text)
        if not m:
            return cls.new(UNKNOWN_EXCEPTION, text or type(ex).__name__)
        return cls(int(m.group(1)), text)


# ---------------------------------------------------------------------------
# A tiny SQL scanner: enough to find FORMAT/SETTINGS clauses and INSERT data
# ---------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>--[^\n]*|\#[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<string>'(?:[^'\\]|\\.|'')*')
  | (?P<qident>"(?:[^"\\]|\\.|"")*"|`(?:[^`\\]|\\.|``)*`)
  | (?P<word>[A-Za-z0-9_$]+)
  | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass
class _Tok:
    kind: str  # word, qident, string, punct
    text: str
    start: int
    end: int
    depth: int

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "word" else ""

    @property
    def ident(self) -> bool:
        return self.kind in ("word", "qident")


def _tokens(text: str, start: int = 0) -> Iterator[_Tok]:
    depth = 0
    for m in _TOKEN_RE.finditer(text, start):
        kind = m.lastgroup
        assert kind is not None  # every alternative of _TOKEN_RE is a named group
        if kind in ("ws", "comment"):
            continue
        tok_text = m.group()
        if kind == "punct":
            if tok_text in "([":
                depth += 1
                yield _Tok(kind, tok_text, m.start(), m.end(), depth - 1)
                continue
            if tok_text in ")]":
                depth = max(0, depth - 1)
        yield _Tok(kind, tok_text, m.start(), m.end(), depth)


@dataclass
class Statement:
    """How to run one request's SQL."""

    kind: str  # "query" | "insert_data"
    first_word: str
    sql: bytes  # the whole statement (query), or the INSERT header before FORMAT (insert_data)
    output_format: str | None = None  # an explicit trailing FORMAT clause of a query
    insert_format: str | None = None
    settings_at: int | None = None  # offset of the INSERT header's top-level SETTINGS clause
    data: bytes = b""


_RESULT_WORDS = {"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "CHECK", "KILL", "WATCH", "("}


def analyze(raw: bytes) -> Statement:
    # latin-1 maps bytes 1:1 onto code points, so offsets are byte offsets and
    # binary INSERT data after the FORMAT clause is never decoded or scanned.
    text = raw.decode("latin-1")
    toks = _tokens(text)
    first = next(toks, None)
    if first is None:
        raise CHError.new(SYNTAX_ERROR, "Empty query")
    first_word = first.upper or first.text
    if first_word != "INSERT":
        top: list[_Tok] = [t for t in toks if t.depth == 0]
        fmt = None
        for i, tok in enumerate(top):
            if tok.upper == "FORMAT" and i + 1 < len(top) and top[i + 1].ident:
                rest = top[i + 2 :]
                if not rest or rest[0].text == ";" or rest[0].upper == "SETTINGS":
                    fmt = top[i + 1].text.strip('`"')
        return Statement("query", first_word, raw, output_format=fmt)
    settings_at = None
    for tok in toks:
        if tok.depth:
            continue
        word = tok.upper
        if word in ("VALUES", "SELECT", "WITH"):
            break  # inline data or INSERT ... SELECT: the engine parses it all
        if word == "SETTINGS" and settings_at is None:
            settings_at = tok.start
        elif word == "FORMAT":
            name = next(toks, None)
            if name is None or not name.ident:
                break
            pos = name.end
            while pos < len(raw) and raw[pos] in b" \t\f":
                pos += 1
            if raw[pos : pos + 1] == b"\r":
                pos += 1
            if raw[pos : pos + 1] == b"\n":
                pos += 1
            return Statement(
                "insert_data",
                "INSERT",
                raw[: tok.start],
                insert_format=name.text.strip('`"'),
                settings_at=settings_at,
                data=raw[pos:],
            )
    return Statement("query", "INSERT", raw)


# ---------------------------------------------------------------------------
# Compression
# ---------------------------------------------------------------------------


def _zstd() -> Any:
    if sys.version_info >= (3, 14):
        from compression import zstd
    else:
        from backports import zstd
    return zstd


def _brotli() -> Any:
    import brotli

    return brotli


def decompress_body(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if not data or encoding in ("", "identity"):
        return data
    try:
        if encoding in ("gzip", "x-gzip"):
            return gzip.decompress(data)
        if encoding == "deflate":
            return zlib.decompress(data)
        if encoding == "zstd":
            return _zstd().decompress(data)
        if encoding == "br":
            return _brotli().decompress(data)
        if encoding == "lz4":
            import lz4.frame

            out = bytearray()
            rest = data
            while rest:  # clickhouse-connect sends one LZ4 frame per block
                dec = lz4.frame.LZ4FrameDecompressor()
                out += dec.decompress(rest)
                if not dec.eof:
                    raise ValueError("truncated LZ4 frame")
                rest = dec.unused_data
            return bytes(out)
    except CHError:
        raise
    except Exception as ex:
        raise CHError.new(CANNOT_DECOMPRESS, f"Cannot decompress {encoding} request body: {ex}") from None
    raise CHError.new(NOT_IMPLEMENTED, f"Unsupported Content-Encoding: {encoding}")


def _supported_response_encodings() -> list[str]:
    found = []
    for name, probe in (("br", _brotli), ("gzip", None), ("deflate", None), ("zstd", _zstd), ("lz4", None)):
        try:
            if probe:
                probe()
            elif name == "lz4":
                import lz4.frame  # noqa: F401
        except ImportError:
            continue
        found.append(name)
    return found


def compress_response(data: bytes, encoding: str, level: int) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data, compresslevel=level)
    if encoding == "deflate":
        return zlib.compress(data, level)
    if encoding == "zstd":
        return _zstd().compress(data)
    if encoding == "br":
        return _brotli().compress(data)
    if encoding == "lz4":
        import lz4.frame

        return lz4.frame.compress(data)
    raise ValueError(encoding)


# ---------------------------------------------------------------------------
# The chDB engine: pooled connection handles, sessions, statement execution
# ---------------------------------------------------------------------------

# URL parameters that are HTTP-interface controls, not engine settings.
TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "quota_key",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "role",
        "stacktrace",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "enable_http_compression",
        "http_zlib_compression_level",
        "http_response_buffer_size",
        "http_wait_end_of_query",
        "http_native_compression_disable_checksumming_on_decompress",
        "cancel_http_readonly_queries_on_client_close",
        "add_http_cors_header",
        "http_write_exception_in_output_format",
        "http_response_headers",
    }
)
_SETTING_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class _Handle:
    """One chDB connection: its own current database and session settings."""

    def __init__(self, conn: Any):
        self.conn = conn
        self.database = "default"
        self.applied: dict[str, str] = {}  # settings this server SET on the handle
        self.lock = threading.Lock()
        self.last_used = time.monotonic()
        self.timeout = 60.0

    def query(self, sql: str | bytes, fmt: str, params: dict[str, str] | None = None) -> Any:
        try:
            return self.conn.query(sql, fmt, params=params or {})
        except Exception as ex:
            raise CHError.from_chdb(ex) from None

    def use(self, database: str) -> None:
        if database != self.database:
            self.query("USE `" + database.replace("\\", "\\\\").replace("`", "\\`") + "`", "TabSeparated")
            self.database = database

    def apply(self, settings: dict[str, str]) -> None:
        for name, value in settings.items():
            if self.applied.get(name) != value:
                if not _SETTING_NAME_RE.match(name):
                    raise CHError.new(BAD_ARGUMENTS, f"Invalid setting name {name!r}")
                self.query(f"SET {name} = {_sql_string(value)}", "TabSeparated")
                self.applied[name] = value
        for name in [n for n in self.applied if n not in settings]:
            self.query(f"SET {name} = DEFAULT", "TabSeparated")
            del self.applied[name]

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass


@dataclass
class Request:
    sql: bytes
    params: dict[str, str] = field(default_factory=dict)  # bound parameters, without the param_ prefix
    settings: dict[str, str] = field(default_factory=dict)
    database: str | None = None  # None: the server default (or the session's current database)
    default_format: str = "TabSeparated"
    session_id: str | None = None
    session_timeout: float = 60.0
    session_check: bool = False
    readonly: bool = False  # GET request


@dataclass
class Result:
    body: bytes
    fmt: str | None  # X-ClickHouse-Format, for statements that produce a result
    summary: dict[str, str]


class Engine:
    def __init__(self, path: str, tmp_dir: str):
        import chdb

        self._chdb = chdb
        self.path = path
        self.tmp_dir = tmp_dir
        self._conn_str = path
        self._root = self._connect()  # keeps the engine open for the server's lifetime
        row = self._root.query(
            "SELECT version(), timezone(), hostName(), getSetting('enable_http_compression')", "TabSeparated"
        ).bytes()
        self.version, self.timezone, self.hostname, http_comp = row.decode().rstrip("\n").split("\t")
        # clickhouse-connect only sends enable_http_compression=1 when the server default is off
        self.http_compression_default = http_comp in ("1", "true")
        self._idle: list[_Handle] = []
        self._sessions: dict[str, _Handle] = {}
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        return self._chdb.connect(self._conn_str)

    # -- handles -----------------------------------------------------------

    def _checkout(self, req: Request, first_word: str) -> tuple[_Handle, str]:
        """Returns the handle and how to give it back: pool, session or discard."""
        if req.session_id:
            with self._lock:
                handle = self._sessions.get(req.session_id)
                if handle is None:
                    if req.session_check:
                        raise CHError.new(SESSION_NOT_FOUND, f"Session {req.session_id} not found")
                    handle = _Handle(self._connect())
                    self._sessions[req.session_id] = handle
                if not handle.lock.acquire(blocking=False):
                    raise CHError.new(SESSION_IS_LOCKED, f"Session {req.session_id} is locked by a concurrent client")
                handle.timeout = req.session_timeout
            return handle, "session"
        if req.readonly or "readonly" in req.settings or first_word in ("SET", "USE"):
            # Anything that would leave state behind on a shared handle gets a private one.
            return _Handle(self._connect()), "discard"
        with self._lock:
            handle = self._idle.pop() if self._idle else None
        return (handle or _Handle(self._connect())), "pool"

    def _checkin(self, handle: _Handle, how: str) -> None:
        handle.last_used = time.monotonic()
        if how == "session":
            handle.lock.release()
        elif how == "pool":
            with self._lock:
                self._idle.append(handle)
        else:
            handle.close()

    def expire_sessions(self) -> None:
        now = time.monotonic()
        with self._lock:
            for sid, handle in list(self._sessions.items()):
                if now - handle.last_used > handle.timeout and handle.lock.acquire(blocking=False):
                    del self._sessions[sid]
                    handle.close()

    def close(self) -> None:
        with self._lock:
            handles = self._idle + list(self._sessions.values())
            self._idle, self._sessions = [], {}
        for handle in handles:
            handle.close()
        try:
            self._root.close()
        except Exception:
            pass

    # -- execution ---------------------------------------------------------

    def execute(self, req: Request) -> Result:
        stmt = analyze(req.sql)
        handle, how = self._checkout(req, stmt.first_word)
        try:
            if req.database or how != "session":
                handle.use(req.database or "default")
            settings = dict(req.settings)
            if req.readonly and "readonly" not in settings:
                settings["readonly"] = "2"
            # readonly goes last: once it is set, other settings may still change but it may not.
            ro = settings.pop("readonly", None)
            handle.apply(settings)
            if ro is not None:
                handle.query(f"SET readonly = {_sql_string(ro)}", "TabSeparated")
            if stmt.kind == "insert_data":
                return self._insert(handle, stmt, req)
            if stmt.first_word == "USE":
                handle.database = ""  # changed by the statement itself: re-issue USE next time
            return self._query(handle, stmt, req)
        finally:
            self._checkin(handle, how)

    @staticmethod
    def _summary(res: Any, body_len: int = 0, insert: bool = False) -> dict[str, str]:
        def num(name: str) -> int:
            try:
                return int(getattr(res, name)())
            except Exception:
                return 0

        try:
            elapsed_ns = int(res.elapsed() * 1e9)
        except Exception:
            elapsed_ns = 0
        if insert:  # an INFILE insert reads exactly the rows it writes
            written_rows, written_bytes = num("rows_read"), num("bytes_read")
            read_rows, read_bytes, result_rows, result_bytes = written_rows, written_bytes, 0, 0
        else:
            written_rows, written_bytes = num("rows_written"), num("bytes_written")
            read_rows, read_bytes = num("storage_rows_read"), num("storage_bytes_read")
            result_rows, result_bytes = num("rows_read"), body_len
        return {
            "read_rows": str(read_rows),
            "read_bytes": str(read_bytes),
            "written_rows": str(written_rows),
            "written_bytes": str(written_bytes),
            "total_rows_to_read": str(read_rows),
            "result_rows": str(result_rows),
            "result_bytes": str(result_bytes),
            "elapsed_ns": str(elapsed_ns),
        }

    @staticmethod
    def _sql(raw: bytes) -> str | bytes:
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return raw  # binary literals: chDB takes bytes too

    def _query(self, handle: _Handle, stmt: Statement, req: Request) -> Result:
        # An explicit FORMAT clause wins over the format argument in chDB, as in ClickHouse.
        fmt = stmt.output_format or req.default_format
        res = handle.query(self._sql(stmt.sql), fmt, req.params)
        body = res.bytes() or b""
        produces_result = bool(body) or stmt.first_word in _RESULT_WORDS
        return Result(body, fmt if produces_result else None, self._summary(res, len(body)))

    def _insert(self, handle: _Handle, stmt: Statement, req: Request) -> Result:
        fd, path = tempfile.mkstemp(suffix=".data", dir=self.tmp_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(stmt.data)
            header = stmt.sql
            cut = stmt.settings_at if stmt.settings_at is not None else len(header)
            infile = f" FROM INFILE {_sql_string(path)} ".encode()
            sql = header[:cut].rstrip() + infile + header[cut:].strip() + f" FORMAT {stmt.insert_format}".encode()
            res = handle.query(self._sql(sql), "TabSeparated", req.params)
            return Result(b"", None, self._summary(res, insert=True))
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass


# ---------------------------------------------------------------------------
# The HTTP front end
# ---------------------------------------------------------------------------

_CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "Native": "application/octet-stream",
    "RowBinary": "application/octet-stream",
    "Parquet": "application/octet-stream",
    "Arrow": "application/octet-stream",
    "ArrowStream": "application/octet-stream",
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
}


class Server:
    def __init__(self, engine: Engine, user: str, password: str, threads: int, verbose: bool):
        from concurrent.futures import ThreadPoolExecutor

        self.engine = engine
        self.user = user
        self.password = password
        self.verbose = verbose
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="chdb")
        self.response_encodings = _supported_response_encodings()
        self.delay_file: Path | None = None  # holds seconds to stall each INSERT (a slow server); see --delay-file

    def insert_delay(self) -> float:
        """Seconds to hold each INSERT, read per INSERT so a test can slow the server down and speed it up
        again while it runs (ClickHouseHTTP.set_insert_delay), without an outage."""
        if self.delay_file is None:
            return 0.0
        try:
            return max(0.0, float(self.delay_file.read_text().strip() or 0))
        except (OSError, ValueError):
            return 0.0

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"chhttp: {msg}", file=sys.stderr, flush=True)

    def _base_headers(self, query_id: str, session_id: str | None) -> dict[str, str]:
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Server-Display-Name": self.engine.hostname,
        }
        if session_id:
            headers["X-ClickHouse-Session-Id"] = session_id
        return headers

    def error_response(self, err: CHError, headers: dict[str, str]) -> web.Response:
        from aiohttp import web

        body = f"{err.message} (version {self.engine.version} (chdb))\n"
        headers = dict(headers)
        headers["X-ClickHouse-Exception-Code"] = str(err.code)
        self.log(f"error {err.code}: {err.message[:300]}")
        return web.Response(
            status=http_status_for(err.code),
            body=body.encode(),
            headers=headers,
            content_type="text/plain",
            charset="UTF-8",
        )

    def authenticate(self, request: web.Request, params: dict[str, str]) -> None:
        user = request.headers.get("X-ClickHouse-User") or params.get("user")
        key = request.headers.get("X-ClickHouse-Key")
        if key is None:
            key = params.get("password")
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                b_user, _, b_pass = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                b_user, b_pass = "", "\0invalid"
            user = user or b_user
            key = b_pass if key is None else key
        elif auth:
            raise CHError.new(AUTHENTICATION_FAILED, "Only Basic HTTP authentication is supported by this test server")
        user = user or "default"
        key = key or ""
        # header values arrive surrogate-escaped when they are not UTF-8: compare the raw bytes
        ok = hmac.compare_digest(user.encode(errors="surrogateescape"), self.user.encode()) & hmac.compare_digest(
            key.encode(errors="surrogateescape"), self.password.encode()
        )
        user = user.encode(errors="surrogateescape").decode(errors="replace")
        if not ok:
            raise CHError.new(
                AUTHENTICATION_FAILED,
                f"{user}: Authentication failed: password is incorrect, or there is no user with such name",
            )

    async def ping(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.Response(text="Ok.\n")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import BodyPartReader, web

        params: dict[str, str] = {}
        for key, value in request.query.items():
            params.setdefault(key, value)
        query_id = params.get("query_id") or request.headers.get("X-ClickHouse-Query-Id") or str(uuid.uuid4())
        session_id = params.get("session_id") or None
        headers = self._base_headers(query_id, session_id)
        try:
            self.authenticate(request, params)
            body = b""
            if request.content_type.startswith("multipart/form-data"):
                reader = await request.multipart()
                async for part in reader:
                    assert isinstance(part, BodyPartReader)  # a form's fields (a nested multipart fails as a bug)
                    if part.filename:
                        raise CHError.new(NOT_IMPLEMENTED, "External data is not supported by this test server")
                    value = (await part.read()).decode()
                    # ClickHouse's http_max_field_value_size (default 128 KiB) caps each field, as here.
                    if len(value) > HTTP_MAX_FIELD_VALUE_SIZE:
                        raise CHError.new(BAD_ARGUMENTS, f"Field value too long: {part.name}")
                    params[part.name or ""] = value
            elif request.method != "GET" or request.can_read_body:
                body = await request.read()
            if not body and "query" not in params and request.method in ("GET", "HEAD"):
                return web.Response(text="Ok.\n")
            if params.get("compress") == "1" or params.get("decompress") == "1":
                raise CHError.new(
                    NOT_IMPLEMENTED,
                    "ClickHouse block compression (compress/decompress=1) is not supported by this test server",
                )
            encoding = request.headers.get("Content-Encoding", "")
            loop = asyncio.get_running_loop()
            if body and encoding:
                body = await loop.run_in_executor(self.executor, decompress_body, body, encoding)
            sql = body
            if params.get("query"):
                sql = params["query"].encode() + b"\n" + body
            req = Request(
                sql=sql,
                database=params.get("database") or request.headers.get("X-ClickHouse-Database") or None,
                default_format=params.get("default_format")
                or request.headers.get("X-ClickHouse-Format")
                or "TabSeparated",
                session_id=session_id,
                session_check=params.get("session_check") == "1",
                readonly=request.method == "GET",
            )
            if session_id and params.get("session_timeout"):
                try:
                    req.session_timeout = min(3600.0, float(params["session_timeout"]))
                except ValueError:
                    raise CHError.new(BAD_ARGUMENTS, "Invalid session timeout") from None
            for key, value in params.items():
                if key.startswith("param_"):
                    req.params[key[6:]] = value
                elif key not in TRANSPORT_PARAMS:
                    req.settings[key] = value
            if self.verbose:
                shown = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
                self.log(f"{request.method} {request.path_qs}\n    headers={shown}\n    sql={sql[:200]!r}")
            if sql.lstrip()[:6].upper() == b"INSERT":
                delay = self.insert_delay()
                if delay:
                    await asyncio.sleep(delay)
            result = await loop.run_in_executor(self.executor, self.engine.execute, req)
        except CHError as err:
            return self.error_response(err, headers)
        except Exception as ex:  # a bug here must still look like a server error to the client
            return self.error_response(CHError.new(UNKNOWN_EXCEPTION, f"{type(ex).__name__}: {ex}"), headers)

        headers["X-ClickHouse-Summary"] = json.dumps(result.summary, separators=(",", ":"))
        headers["X-ClickHouse-Timezone"] = req.settings.get("session_timezone") or self.engine.timezone
        content_type = "text/plain; charset=UTF-8"
        if result.fmt:
            headers["X-ClickHouse-Format"] = result.fmt
            content_type = _CONTENT_TYPES.get(result.fmt, "text/plain; charset=UTF-8")
        headers["Content-Type"] = content_type
        payload = result.body
        compression_on = params.get("enable_http_compression", "1" if self.engine.http_compression_default else "0")
        if payload and compression_on in ("1", "true"):
            accepted = {e.strip().lower() for e in request.headers.get("Accept-Encoding", "").split(",")}
            chosen = next((e for e in self.response_encodings if e in accepted), None)
            if chosen:
                try:
                    level = int(params.get("http_zlib_compression_level", "3"))
                except ValueError:
                    level = 3
                payload = await asyncio.get_running_loop().run_in_executor(
                    self.executor, compress_response, payload, chosen, level
                )
                headers["Content-Encoding"] = chosen
        return web.Response(status=200, body=payload, headers=headers)


async def serve(args: argparse.Namespace) -> None:
    from aiohttp import web

    data = Path(args.data).resolve()
    data.mkdir(parents=True, exist_ok=True)
    # INSERT payloads are staged next to the data dir (not in /tmp), so a SIGKILLed server leaves nothing behind
    # outside the test's own directory; the next start wipes it.
    tmp_dir = str(data.with_name(data.name + ".chhttp-tmp"))
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    engine = Engine(str(data), tmp_dir)
    server = Server(engine, args.user, args.password, args.threads, args.verbose)
    server.delay_file = Path(args.delay_file) if args.delay_file else None
    # auto_decompress=False: the body's Content-Encoding is ours to undo (aiohttp knows no lz4)
    app = web.Application(client_max_size=args.max_body, handler_args={"auto_decompress": False})
    app.router.add_route("GET", "/ping", server.ping)
    app.router.add_route("HEAD", "/ping", server.ping)
    app.router.add_route("GET", "/replicas_status", server.ping)
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, HOST, args.port, reuse_address=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await site.start()
        print(
            f"chhttp: listening on http://{HOST}:{args.port} data={data} chdb={engine.version}",
            file=sys.stderr,
            flush=True,
        )

        async def housekeeping() -> None:
            while not stop.is_set():
                await asyncio.sleep(1.0)
                if args.parent_pid and os.getppid() != args.parent_pid:
                    print("chhttp: parent process is gone, exiting", file=sys.stderr, flush=True)
                    stop.set()
                await loop.run_in_executor(server.executor, engine.expire_sessions)

        task = asyncio.create_task(housekeeping())
        await stop.wait()
        task.cancel()
    finally:
        await runner.cleanup()
        server.executor.shutdown(wait=True, cancel_futures=True)
        engine.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ClickHouse-HTTP-compatible test server backed by chDB")
    parser.add_argument("--data", required=True, help="chDB data directory (owned by this process)")
    parser.add_argument("--port", type=int, required=True, help=f"port to listen on ({HOST} only)")
    parser.add_argument("--user", default=os.environ.get("CHHTTP_USER", "default"))
    parser.add_argument("--password", default=os.environ.get("CHHTTP_PASSWORD", ""))
    parser.add_argument("--threads", type=int, default=8, help="concurrent chDB calls")
    parser.add_argument("--max-body", type=int, default=1 << 30, help="largest request body, bytes")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is no longer our parent")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    parser.add_argument(
        "--delay-file", default="", help="a file holding seconds to stall every INSERT (slow-server mode)"
    )
    args = parser.parse_args(argv)
    asyncio.run(serve(args))


# ---------------------------------------------------------------------------
# The test helper
# ---------------------------------------------------------------------------

_LIVE: weakref.WeakSet[ClickHouseHTTP] = weakref.WeakSet()
_ROOT = Path(__file__).resolve().parents[1]  # the repository root, where testkit/ sits


def _cleanup_all() -> None:
    for server in list(_LIVE):
        try:
            server.close()
        except Exception:
            pass


atexit.register(_cleanup_all)


class ClickHouseHTTP:
    """Runs this module's server (``python -m testkit.chhttp``) as a subprocess for a test.

    The port and data directory are fixed at the first ``start()``, so
    ``stop()``/``kill()`` followed by ``start()`` brings the same server back
    at the same URL with the same data, and a client configured with ``url``
    sees an outage and then a recovery.  ``pause()``/``resume()`` (SIGSTOP /
    SIGCONT) simulate a hung server: connections are accepted by the kernel
    but nothing answers.  The subprocess exits by itself if the test process
    dies, and ``atexit`` stops it on a normal exit.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        user: str = "default",
        password: str = "",
        database: str = "default",
        tz: str | None = "UTC",
        startup_timeout: float = 30.0,
        log_path: str | os.PathLike[str] | None = None,
        verbose: bool = False,
    ):
        self.data_dir = Path(data_dir)
        self.port = port
        self.user = user
        self.password = password
        self.database = database
        self.tz = tz
        self.startup_timeout = startup_timeout
        self.verbose = verbose
        # the log (appended to across restarts) sits next to the data dir: DIR.chhttp.log
        self.log_path = Path(log_path) if log_path else self.data_dir.with_name(self.data_dir.name + ".chhttp.log")
        self.proc: subprocess.Popen | None = None
        self.paused = False
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        # Slow-server mode: seconds each INSERT is held before it runs (set_insert_delay), DIR.chhttp-delay.
        self.delay_path = self.data_dir.with_name(self.data_dir.name + ".chhttp-delay")

    # -- addresses -------------------------------------------------------

    @property
    def url(self) -> str:
        """DSN for clickhouse_connect.get_client/get_async_client(dsn=...)."""
        if self.port is None:
            raise RuntimeError("start() the server first to assign a port")
        return f"http://{quote(self.user, safe='')}:{quote(self.password, safe='')}@{HOST}:{self.port}/{quote(self.database, safe='')}"

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- lifecycle -------------------------------------------------------

    def ping(self, timeout: float = 1.0) -> bool:
        try:
            with self._opener.open(f"{self.base_url}/ping", timeout=timeout) as resp:
                return resp.status == 200 and resp.read() == b"Ok.\n"
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> ClickHouseHTTP:
        if self.running:
            return self
        if self.port is None:
            self.port = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["CHHTTP_USER"] = self.user
        env["CHHTTP_PASSWORD"] = self.password  # not on the command line
        if self.tz:
            env["TZ"] = self.tz
        # testkit is not installed: the child finds it where this process did, at the repository root
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
        cmd = [
            sys.executable,
            "-m",
            "testkit.chhttp",
            "--data",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--parent-pid",
            str(os.getpid()),
        ]
        if self.verbose:
            cmd.append("--verbose")
        cmd += ["--delay-file", str(self.delay_path)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        self.paused = False
        _LIVE.add(self)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"chhttp exited with {self.proc.returncode} on port {self.port}:\n{self.log()[-4000:]}"
                )
            if self.ping(timeout=0.5):
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"chhttp did not answer /ping within {self.startup_timeout}s:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM); SIGKILL after ``timeout``."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        if self.paused:
            proc.send_signal(signal.SIGCONT)
            self.paused = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Crash (SIGKILL)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()
        self.paused = False

    def set_insert_delay(self, seconds: float) -> None:
        """Make every INSERT from now on wait ``seconds`` before it runs (0: full speed again); queries are
        not delayed. Takes effect at once, without a restart: the server reads it per INSERT."""
        self.delay_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.delay_path.with_name(self.delay_path.name + ".tmp")
        tmp.write_text(str(float(seconds)))
        os.replace(tmp, self.delay_path)

    def restart(self) -> ClickHouseHTTP:
        self.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: the server hangs (connects succeed, nothing answers)."""
        if self.running and not self.paused:
            os.kill(self.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            self.paused = True

    def resume(self) -> None:
        if self.running and self.paused:
            os.kill(self.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
            self.paused = False

    def close(self) -> None:
        """Stop the server for good (the data dir and the log stay)."""
        if self.paused:
            self.kill()
        self.stop()
        _LIVE.discard(self)

    def __enter__(self) -> ClickHouseHTTP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    main()
