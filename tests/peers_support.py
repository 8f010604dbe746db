"""What the peer-client tests share: the official JavaScript clients installed and bundled, a collector that
notes every request as it arrived, and reads through the query service.

The clients live in tests/peers (package.json + package-lock.json, exact versions). The session fixture
``peers`` runs ``npm ci`` there once when node_modules is missing or was installed from another lock (a
stamp file in node_modules records which), then bundles the browser entries with the pinned esbuild into
tests/peers/dist (build.mjs, well under a second). Without ``node`` or ``npm`` every peer test is skipped
with the reason; a failing install or bundle fails them.

Clocks: every client runs with its clock shifted (tests/peers/clock-shift.js: ``node -r`` for Node, an
init script in Chromium), so only the collector's ``sentAt`` skew correction can store the events at the
real time.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import functools
import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from collector.app import create_app as create_collector
from journeys.metrics import Metrics
from journeys.stores import Stores
from support import basic, wait_until, with_settings

PEERS_DIR = Path(__file__).parent / "peers"
NODE_MODULES = PEERS_DIR / "node_modules"
STAMP = NODE_MODULES / ".journeys-installed"
CLOCK_SHIFT = PEERS_DIR / "clock-shift.js"
HOURS = 3600 * 1000
#: How far a stored time may be from the real time at which it was sent (the clients' clocks are hours off).
TIME_SLACK_S = 3.0

#: The versions the tests were written against (package.json pins them; checked after install).
VERSIONS = {
    "@segment/analytics-node": "3.1.0",
    "@rudderstack/rudder-sdk-node": "3.1.1",
    "@segment/analytics-next": "1.84.3",
    "@rudderstack/analytics-js": "3.34.1",
    "esbuild": "0.28.2",
}


@dataclass(frozen=True)
class Peers:
    node: str
    dir: Path
    bundles: dict[str, Path]  # "segment" / "rudder" → the browser bundle
    install_s: float  # time npm ci took in this session (0.0: node_modules was current)
    bundle_s: float

    async def run_node(
        self, script: str, plan: dict[str, Any], offset_ms: int, timeout: float = 40.0
    ) -> dict[str, Any]:
        """Run ``node -r clock-shift.js SCRIPT PLAN`` with the clock ``offset_ms`` off; its last stdout line
        (JSON) is the result. Async: the collector under test runs on this event loop."""
        env = {**os.environ, "PEER_CLOCK_OFFSET_MS": str(offset_ms), "NODE_NO_WARNINGS": "1"}
        proc = await asyncio.create_subprocess_exec(
            self.node,
            "-r",
            str(CLOCK_SHIFT),
            str(self.dir / script),
            orjson.dumps(plan).decode(),
            cwd=self.dir,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            out, err = await proc.communicate()
            raise AssertionError(
                f"node {script} ({plan.get('client')}) still running after {timeout}s\nstdout: {out.decode()[-3000:]}"
                f"\nstderr: {err.decode()[-3000:]}"
            ) from None
        lines = out.decode().strip().splitlines()
        assert proc.returncode == 0 and lines, (
            f"node {script} exited {proc.returncode}\nstdout: {out.decode()[-3000:]}\nstderr: {err.decode()[-3000:]}"
        )
        result = orjson.loads(lines[-1])
        result["stderr"] = err.decode()
        return result


def _run(cmd: list[str], timeout: float, what: str) -> None:
    done = subprocess.run(cmd, cwd=PEERS_DIR, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(
            f"{what} failed (exit {done.returncode}): {' '.join(cmd)}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )


def _lock_digest(node: str) -> str:
    node_version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((PEERS_DIR / name).read_bytes())
    digest.update(node_version.encode())
    return digest.hexdigest()


@functools.cache
def _prepare() -> Peers | str:
    """Install (when needed) and bundle, once per process. A string: why the peer tests cannot run."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if path is None)
        return f"PEER CLIENT TESTS NOT RUN: {missing} not found on PATH (install Node.js 20+ with npm)"
    wanted = _lock_digest(node)
    lock_path = (
        Path(tempfile.gettempdir()) / f"journeys-peers-{hashlib.sha256(str(PEERS_DIR).encode()).hexdigest()[:12]}.lock"
    )
    install_s = 0.0
    with open(lock_path, "w") as lock:  # two test runs at once must not both rewrite node_modules
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (STAMP.exists() and STAMP.read_text() == wanted):
            started = time.monotonic()
            _run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], 600, "npm ci in tests/peers")
            install_s = time.monotonic() - started
            STAMP.write_text(wanted)
        for name, version in VERSIONS.items():
            installed = orjson.loads((NODE_MODULES / name / "package.json").read_bytes())["version"]
            if installed != version:
                pytest.fail(f"tests/peers has {name} {installed}, the tests expect {version}: fix package.json/lock")
        started = time.monotonic()
        _run([node, "build.mjs"], 120, "bundling the browser clients (tests/peers/build.mjs)")
        bundle_s = time.monotonic() - started
    bundles = {name: PEERS_DIR / "dist" / f"{name}.js" for name in ("segment", "rudder")}
    return Peers(node=node, dir=PEERS_DIR, bundles=bundles, install_s=install_s, bundle_s=bundle_s)


@pytest.fixture(scope="session")
def peers() -> Peers:
    prepared = _prepare()
    if isinstance(prepared, str):
        pytest.skip(prepared)
    print(f"\npeer clients: npm ci {prepared.install_s:.1f}s (0 = already current), bundles {prepared.bundle_s:.2f}s")
    return prepared


# ---- the collector, watched ---------------------------------------------------------------------------


@dataclass
class Sent:
    """One request the collector received, as it arrived (body decompressed for reading here only)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw: bytes
    at: float  # time.time() when it arrived
    status: int = 0
    answer: bytes = b""

    @property
    def body(self) -> Any:
        data = self.raw
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        elif self.headers.get("Content-Encoding", "").lower() == "deflate":
            data = zlib.decompress(data)
        try:
            return orjson.loads(data) if data else None
        except orjson.JSONDecodeError:
            return data[:200]

    def events(self) -> list[dict[str, Any]]:
        body = self.body
        if not isinstance(body, dict):
            return []
        if isinstance(body.get("batch"), list):
            return [e for e in body["batch"] if isinstance(e, dict)]
        return [body] if self.method == "POST" else []


@dataclass
class WatchedCollector:
    server: TestServer
    seen: list[Sent] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def posts(self) -> list[Sent]:
        return [s for s in self.seen if s.method == "POST"]

    def wire_events(self) -> list[tuple[Sent, dict[str, Any]]]:
        return [(s, e) for s in self.posts() for e in s.events()]

    def report(self) -> str:
        """What the client sent, request by request: route, headers, body shape, the answer."""
        return "\n".join(describe(s) for s in self.seen) or "(the collector received nothing)"


_SHOWN_HEADERS = (
    "Content-Type",
    "Content-Encoding",
    "Authorization",
    "AnonymousId",
    "SentAt",
    "X-Retry-Count",
    "Origin",
    "Sec-Fetch-Mode",
    "User-Agent",
    "Access-Control-Request-Method",
    "Access-Control-Request-Headers",
)


def _null_paths(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _null_paths(v, f"{prefix}.{k}" if prefix else k)]
    if value is None or value == "":
        return [f"{prefix}={'null' if value is None else chr(34) * 2}"]
    return []


def describe(s: Sent) -> str:
    headers = {}
    for name in _SHOWN_HEADERS:
        if name in s.headers:
            value = s.headers[name]
            if name == "Authorization" and value.lower().startswith("basic "):
                try:
                    value = "Basic b64(" + base64.b64decode(value[6:]).decode() + ")"
                except ValueError:
                    pass
            if name == "AnonymousId":
                try:
                    value = f"{value} (b64 of {base64.b64decode(value).decode()!r})"
                except ValueError:
                    pass
            headers[name] = value
    line = (
        f"{s.method} {s.path}{'?' + '&'.join(f'{k}={v}' for k, v in s.query.items()) if s.query else ''} → {s.status}"
    )
    line += f"\n    headers: {headers}"
    body = s.body
    if isinstance(body, dict):
        top = {}
        for k, v in body.items():  # the envelope: values of the few that matter, types of the rest
            if k == "batch" and isinstance(v, list):
                top[k] = f"[{len(v)} events]"
            else:
                top[k] = v if k in ("sentAt", "timestamp", "writeKey") else type(v).__name__
        line += f"\n    body: {top}"
        for event in s.events():
            shape = sorted(k for k in event)
            nulls = _null_paths({k: v for k, v in event.items() if k not in ("properties", "traits")})
            times = {k: event[k] for k in ("timestamp", "originalTimestamp", "sentAt") if k in event}
            line += (
                f"\n    event {event.get('type')}/{event.get('event') or event.get('name') or ''}: keys {shape}"
                f" channel={event.get('channel', '-')!r} times={times}" + (f" null/empty: {nulls}" if nulls else "")
            )
    elif s.raw:
        line += f"\n    body (not JSON): {s.raw[:120]!r}"
    if s.status >= 300 and s.answer:
        line += f"\n    answer: {s.answer[:400].decode(errors='replace')}"
    return line


@pytest.fixture
async def watched_collector(stores: Stores, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await watched_collector()`` → a collector on 127.0.0.1 whose every request is noted in ``seen``."""
    started: list[TestServer] = []

    async def make(**settings: object) -> WatchedCollector:
        app = create_collector(
            with_settings(stores, spool_dir=tmp_path / f"spool{len(started)}", **settings), Metrics()
        )
        watched = WatchedCollector(TestServer(app, host="127.0.0.1"))

        @web.middleware
        async def note(request: web.Request, handler):  # type: ignore[no-untyped-def]
            sent = Sent(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                await request.read(),
                time.time(),
            )
            watched.seen.append(sent)
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                sent.status, sent.answer = exc.status, (exc.text or "").encode()
                raise
            sent.status = response.status
            sent.answer = (
                response.body if isinstance(response, web.Response) and isinstance(response.body, bytes) else b""
            )
            return response

        app.middlewares.insert(0, note)  # outermost: the request as it came, the answer as it left
        await watched.server.start_server()
        started.append(watched.server)
        return watched

    yield make
    for server in started:
        await server.close()


# ---- reading back ----------------------------------------------------------------------------------------


async def customer_events(http, query, read_key: str, customer_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    from urllib.parse import quote

    async with http.get(
        query.make_url(f"/v1/customers/{quote(customer_id, safe='')}/events"), headers=basic(read_key)
    ) as r:
        if r.status == 404:  # no event of theirs stored (yet)
            return {"customer_id": customer_id, "ids": [], "count": 0, "events": []}
        assert r.status == 200, await r.text()
        return await r.json()


async def wait_customer(http, query, read_key: str, customer_id: str, n: int, timeout: float = 20.0) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The customer's events once at least ``n`` are readable by ``customer_id`` (stitched included)."""

    async def enough() -> dict[str, Any] | None:
        body = await customer_events(http, query, read_key, customer_id)
        return body if body["count"] >= n else None

    try:
        return await wait_until(enough, timeout=timeout, interval=0.1)
    except AssertionError:
        body = await customer_events(http, query, read_key, customer_id)
        raise AssertionError(
            f"{n} events not readable by {customer_id!r} within {timeout}s; read {body['count']}: "
            f"{[(e['type'], e['event'], e['user_id'], e['anonymous_id']) for e in body['events']]}"
        ) from None


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def wire_time(event: dict[str, Any], batch: Sent) -> tuple[float, float]:
    """(the client's event time, its sentAt) as sent, in epoch seconds."""
    body = batch.body if isinstance(batch.body, dict) else {}
    sent_at = event.get("sentAt") or body.get("sentAt")
    at = event.get("timestamp") or event.get("originalTimestamp")
    assert at is not None and sent_at is not None, event  # every client here sends both
    return parse_time(at), parse_time(sent_at)


def check_clock_shift(collector: WatchedCollector, offset_ms: int) -> None:
    """Every event went out with the shifted clock (else the test proves nothing about skew correction)."""
    for sent, event in collector.wire_events():
        at, sent_at = wire_time(event, sent)
        skew = sent_at - sent.at
        assert abs(skew - offset_ms / 1000) < 60, (
            f"sentAt {event.get('sentAt')} of {event.get('type')} is {skew:.0f}s off real time, not the "
            f"{offset_ms / 1000:.0f}s the clock shift should give"
        )


def by_name(events: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for event in events:
        out.setdefault((event["type"], event["event"]), []).append(event)
    return out
