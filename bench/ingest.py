#!/usr/bin/env python3
"""Ingest benchmark: the real collector against a bare aiohttp handler, same load, same bodies.

What it does, in one run, on loopback only (127.0.0.1):

1. Pre-generates the request bodies before anything is timed: Segment ``/v1/batch`` bodies of
   ``--batch-size`` realistic events each (varied users, anonymous visitors, channels, event names, a few
   properties, some pages with UTM links, some identifies; every ``messageId`` unique, so the collector's
   de-duplication collapses nothing). Gzip'd by default, as the SDKs send them (``--no-gzip`` to send raw).
2. **Baseline**: starts a bare aiohttp app in its own process (``--serve-baseline``; the same
   ``client_max_size`` as the collector) whose handler only reads the body, gunzips it the way the
   collector does, ``orjson.loads`` it and answers 200 with a small JSON body. Drives it
   ``--baseline-passes`` times over the same bodies (its run is ~20× shorter than the collector's, so one
   pass is a noisy figure) and reports the median pass. Stops it.
3. **Collector**: creates a project with ``journeys project create --json`` in a fresh temporary data dir,
   starts ``journeys up`` there (embedded chDB + embedded PostgreSQL, the default configuration) on free
   ports, drives the collector with the same bodies, then polls ``GET /v1/stats`` on the query port until
   ClickHouse holds every acknowledged event. Stops it with SIGTERM.

Both phases use the same load generator (this process: asyncio + one aiohttp ClientSession, a fixed number
of requests in flight), the same warm-up, the same bodies in the same order. Only one server runs at a time.

Figures:

* collector **stored events/s** = events acknowledged / (first request → first ``/v1/stats`` poll that
  reports them all). ``/v1/stats`` is polled only after the last acknowledgement (nothing can be stored
  before it is acknowledged), so polling does not compete with ingest; resolution is ``--poll-interval``.
* **acked events/s** (first request → last 200) and ack latency p50/p99 per request, for both servers.
* CPU used by each server process, by the load generator and by everything else on the machine during the
  phase (from ``/proc``): on a small shared machine this tells a server-bound figure from a
  client-bound or noisy one. CPU µs per event is the least noise-sensitive cost figure.

The verdict is ``stored_collector_eps / baseline_eps >= --target`` (default 0.5), with no failed requests.
Any non-200, transport error or short ``accepted`` count is a failure and is reported.

Exit status: 0 PASS, 1 FAIL, 2 the benchmark itself could not run. Subprocesses are stopped on every exit
(SIGTERM, then SIGKILL) and the temporary directory is removed (unless ``--keep``).

    . /tmp/v/bin/activate && python bench/ingest.py                # defaults: about a minute on 2 cores
    python bench/ingest.py --batches 4000 --concurrency 64 --json
    python bench/ingest.py --py-spy /tmp/collector.svg               # profile the collector while it runs
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import gzip
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from benchlib import free_port  # the sibling (this file's directory is first on sys.path)

HOST = "127.0.0.1"  # every byte of traffic stays on loopback
DEFAULT_MAX_REQUEST_BYTES = 500 * 1024  # journeys.config.Settings.max_request_bytes; read from there if importable
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------------------------------------
# The bare baseline server (runs in its own process: ``ingest.py --serve-baseline PORT``)
# --------------------------------------------------------------------------------------------------------


def serve_baseline(port: int, max_bytes: int) -> None:
    """A bare aiohttp app: read the body, gunzip it as the collector does (capped decompressobj),
    ``orjson.loads`` it, answer 200 with a small JSON body. Nothing else."""
    from aiohttp import web

    def refuse(status: int, reason: str) -> web.Response:
        return web.Response(
            status=status,
            body=orjson.dumps({"errors": [{"field": "body", "reason": reason}]}),
            content_type="application/json",
        )

    async def handler(request: web.Request) -> web.Response:
        raw = await request.read()
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                body = decompressor.decompress(raw, max_bytes + 1)
            except zlib.error as exc:
                return refuse(400, f"invalid gzip: {exc}")
            if len(body) > max_bytes or decompressor.unconsumed_tail:
                return refuse(413, "too large")
            if not decompressor.eof:
                return refuse(400, "truncated gzip")
        elif encoding in ("", "identity"):
            body = raw
        else:
            return refuse(415, "unsupported encoding")
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return refuse(400, f"invalid JSON: {exc}")
        batch = document.get("batch") if isinstance(document, dict) else None
        accepted = len(batch) if isinstance(batch, list) else 0
        return web.Response(
            body=orjson.dumps({"success": True, "accepted": accepted, "quarantined": []}),
            content_type="application/json",
        )

    async def run() -> None:
        # As the collector: the same size cap, and aiohttp's own gunzip off, so the handler does it.
        app = web.Application(client_max_size=max_bytes + 64 * 1024, handler_args={"auto_decompress": False})
        app.router.add_post("/v1/batch", handler)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)  # as `journeys up`
        await runner.setup()
        await web.TCPSite(runner, HOST, port, reuse_address=True).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"baseline is up: http://{HOST}:{port}", flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(run())


# --------------------------------------------------------------------------------------------------------
# Bodies
# --------------------------------------------------------------------------------------------------------

# (channel, weight, event names); "call_centre" events sometimes carry a sentiment.
_CHANNELS: list[tuple[str, int, tuple[str, ...]]] = [
    ("web", 34, ("Product Viewed", "Product Added", "Cart Viewed", "Checkout Started", "Order Completed", "Signed Up")),
    ("app", 22, ("App Opened", "Product Viewed", "Product Added", "Order Completed", "Push Enabled")),
    ("email", 12, ("Email Delivered", "Email Opened", "Email Link Clicked", "Unsubscribed")),
    ("store", 8, ("Store Visited", "Order Completed", "Product Returned")),
    ("ads", 7, ("Ad Impression", "Ad Clicked")),
    ("social", 5, ("Post Engaged", "Profile Visited")),
    ("call_centre", 5, ("Support Call Started", "Support Call Ended", "Complaint Logged")),
    ("sms", 4, ("SMS Delivered", "SMS Link Clicked")),
    ("push", 3, ("Push Delivered", "Push Opened")),
]
_CHANNEL_WEIGHTS = [w for _, w, _ in _CHANNELS]
_PAGES = ("/", "/pricing", "/products/shoes", "/products/bags", "/cart", "/checkout", "/blog/how-to-choose", "/help")
_UTM = (
    "",
    "",
    "?utm_source=google&utm_medium=cpc&utm_campaign=winter_sale",
    "?utm_source=newsletter&utm_medium=email&utm_campaign=weekly",
    "?utm_source=facebook&utm_medium=social&utm_campaign=retarget",
)
_LIBRARIES = (
    {"name": "analytics.js", "version": "5.2.0"},
    {"name": "analytics-ios", "version": "4.1.8"},
    {"name": "analytics-android", "version": "4.11.3"},
    {"name": "analytics-python", "version": "2.3.2"},
)
_PLANS = ("free", "basic", "pro", "enterprise")
_CURRENCIES = ("EUR", "USD", "GBP")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EventFactory:
    """Deterministic (seeded) realistic Segment events; every messageId is unique."""

    def __init__(self, seed: int, users: int):
        self.rng = random.Random(seed)
        self.users = users
        self.clock_ms = int(time.time() * 1000) - 3600_000  # the last hour, ascending
        self.serial = 0

    def _user(self) -> dict[str, str]:
        rng = self.rng
        if rng.random() < 0.15:
            return {"anonymousId": f"anon-{rng.getrandbits(48):012x}"}
        # A skewed population: a few heavy users, a long tail.
        n = min(int(rng.paretovariate(1.2)) - 1, self.users - 1) if rng.random() < 0.5 else rng.randrange(self.users)
        return {"userId": f"user-{n:07d}"}

    def event(self) -> dict[str, Any]:
        rng = self.rng
        self.serial += 1
        self.clock_ms += rng.randint(0, 40)
        message_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        context = {
            "library": rng.choice(_LIBRARIES),
            "ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
        }
        roll = rng.random()
        if roll < 0.05:
            user = {"userId": f"user-{rng.randrange(self.users):07d}"}
            return {
                "type": "identify",
                "messageId": message_id,
                **user,
                "timestamp": _iso(self.clock_ms),
                "traits": {
                    "email": f"{user['userId']}@example.com",
                    "plan": rng.choice(_PLANS),
                    "age": rng.randint(18, 80),
                },
                "context": context,
            }
        if roll < 0.20:
            path = rng.choice(_PAGES)
            url = f"https://shop.example.com{path}{rng.choice(_UTM)}"
            return {
                "type": "page",
                "messageId": message_id,
                **self._user(),
                "name": path.strip("/") or "home",
                "timestamp": _iso(self.clock_ms),
                "properties": {
                    "channel": "web",
                    "url": url,
                    "path": path,
                    "title": f"Shop | {path}",
                    "referrer": rng.choice(("", "https://www.google.com/", "https://news.example.org/")),
                },
                "context": context,
            }
        channel, _, names = rng.choices(_CHANNELS, weights=_CHANNEL_WEIGHTS)[0]
        properties: dict[str, Any] = {"channel": channel}
        name = rng.choice(names)
        if "Product" in name or "Order" in name or "Cart" in name:
            properties.update(
                product_id=f"sku-{rng.randrange(5000):05d}",
                price=round(rng.uniform(3, 400), 2),
                currency=rng.choice(_CURRENCIES),
                quantity=rng.randint(1, 4),
            )
        elif channel in ("email", "sms", "push"):
            properties.update(
                campaign_id=f"cmp-{rng.randrange(300):04d}", template=rng.choice(("promo", "digest", "reminder"))
            )
        elif channel == "call_centre":
            properties.update(agent_id=f"agent-{rng.randrange(80):03d}", duration_s=rng.randint(20, 1800))
            if rng.random() < 0.6:
                properties["sentiment"] = rng.choice(("positive", "neutral", "negative"))
        else:
            properties.update(placement=rng.choice(("feed", "search", "story", "banner")), position=rng.randint(1, 12))
        return {
            "type": "track",
            "messageId": message_id,
            **self._user(),
            "event": name,
            "timestamp": _iso(self.clock_ms),
            "properties": properties,
            "context": context,
        }

    def body(self, size: int) -> dict[str, Any]:
        batch = [self.event() for _ in range(size)]
        return {"batch": batch, "sentAt": _iso(self.clock_ms + self.rng.randint(50, 2000))}


def make_bodies(factory: EventFactory, count: int, size: int, use_gzip: bool) -> tuple[list[bytes], int]:
    """``count`` encoded bodies and their total uncompressed size."""
    out: list[bytes] = []
    raw_bytes = 0
    for _ in range(count):
        raw = orjson.dumps(factory.body(size))
        raw_bytes += len(raw)
        out.append(gzip.compress(raw, compresslevel=6, mtime=0) if use_gzip else raw)
    return out, raw_bytes


# --------------------------------------------------------------------------------------------------------
# CPU accounting from /proc (Linux; figures become None elsewhere)
# --------------------------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(pid: int) -> float | None:
    """user+system CPU seconds of a process, all its threads."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15 of the full line)


def machine_busy_s() -> float | None:
    """Busy CPU seconds of the whole machine, summed over cores."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    values = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(values) - values[3] - values[4]) / _TICK


@dataclass
class CpuMark:
    wall: float
    server: float | None
    loadgen: float
    machine: float | None

    @classmethod
    def take(cls, server_pid: int) -> "CpuMark":
        return cls(time.perf_counter(), proc_cpu_s(server_pid), time.process_time(), machine_busy_s())


def cpu_between(a: CpuMark, b: CpuMark) -> dict[str, float | None]:
    wall = max(b.wall - a.wall, 1e-9)
    server = None if a.server is None or b.server is None else b.server - a.server
    loadgen = b.loadgen - a.loadgen
    machine = None if a.machine is None or b.machine is None else b.machine - a.machine
    other = None if machine is None or server is None else max(0.0, machine - server - loadgen)
    return {
        "wall_s": wall,
        "server_cpu_s": server,
        "server_cores": None if server is None else server / wall,
        "loadgen_cores": loadgen / wall,
        "other_cores": None if other is None else other / wall,
    }


# --------------------------------------------------------------------------------------------------------
# The load generator
# --------------------------------------------------------------------------------------------------------


@dataclass
class Drive:
    requests: int = 0
    ok: int = 0
    events_sent: int = 0
    events_acked: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, 200s only
    failures: Counter[str] = field(default_factory=Counter)
    failure_sample: str = ""
    t_first: float = 0.0
    t_last_ack: float = 0.0


async def drive(
    session: aiohttp.ClientSession,
    url: str,
    bodies: list[bytes],
    headers: dict[str, str],
    *,
    events_per_body: int,
    concurrency: int,
    duration: float | None,
) -> Drive:
    """Send ``bodies`` in order with ``concurrency`` requests in flight; stop early at ``duration`` seconds."""
    result = Drive()
    indexes = iter(range(len(bodies)))
    result.t_first = time.perf_counter()
    deadline = result.t_first + duration if duration else None

    async def worker() -> None:
        for i in indexes:  # shared: each body is sent once
            if deadline is not None and time.perf_counter() >= deadline:
                return
            result.requests += 1
            result.events_sent += events_per_body
            began = time.perf_counter()
            try:
                async with session.post(url, data=bodies[i], headers=headers) as response:
                    payload = await response.read()
                    status = response.status
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                result.failures[type(exc).__name__] += 1
                result.failure_sample = result.failure_sample or f"{type(exc).__name__}: {exc}"
                continue
            ended = time.perf_counter()
            if status != 200:
                result.failures[f"HTTP {status}"] += 1
                result.failure_sample = result.failure_sample or f"HTTP {status}: {payload[:300]!r}"
                continue
            try:
                accepted = orjson.loads(payload).get("accepted")
            except (orjson.JSONDecodeError, AttributeError):
                accepted = None
            if accepted != events_per_body:
                result.failures["200 with accepted != sent"] += 1
                result.failure_sample = result.failure_sample or f"200 but: {payload[:300]!r}"
            result.ok += 1
            result.events_acked += accepted if isinstance(accepted, int) else 0
            result.latencies.append(ended - began)
            result.t_last_ack = max(result.t_last_ack, ended)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if not result.t_last_ack:
        result.t_last_ack = time.perf_counter()
    return result


def percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def summarize(d: Drive) -> dict[str, Any]:
    lat = sorted(d.latencies)
    acked_s = max(d.t_last_ack - d.t_first, 1e-9)
    return {
        "requests": d.requests,
        "requests_ok": d.ok,
        "events_sent": d.events_sent,
        "events_acked": d.events_acked,
        "acked_s": acked_s,
        "acked_eps": d.events_acked / acked_s,
        "ack_p50_ms": _ms(percentile(lat, 50)),
        "ack_p99_ms": _ms(percentile(lat, 99)),
        "ack_max_ms": None if not lat else lat[-1] * 1000,
        "failures": dict(d.failures),
        "failure_sample": d.failure_sample or None,
    }


def client_session(concurrency: int, timeout_s: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )


def ingest_headers(write_key: str | None, use_gzip: bool) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if use_gzip:
        headers["Content-Encoding"] = "gzip"
    if write_key is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
    return headers


async def stored_events(session: aiohttp.ClientSession, stats_url: str, read_key: str) -> int:
    headers = {"Authorization": "Basic " + base64.b64encode(f"{read_key}:".encode()).decode()}
    async with session.get(stats_url, headers=headers) as response:
        payload = await response.read()
        if response.status != 200:
            raise RuntimeError(f"GET /v1/stats answered {response.status}: {payload[:300]!r}")
        return int(orjson.loads(payload)["events"])


async def wait_stored(
    session: aiohttp.ClientSession, stats_url: str, read_key: str, expected: int, timeout: float, interval: float
) -> tuple[float | None, int, int]:
    """Poll until ``/v1/stats`` reports ``expected`` events: (time it did or None, last count, polls)."""
    deadline = time.perf_counter() + timeout
    polls = 0
    count = -1
    while True:
        polls += 1
        count = await stored_events(session, stats_url, read_key)
        now = time.perf_counter()
        if count >= expected:
            return now, count, polls
        if now >= deadline:
            return None, count, polls
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------------------


async def run_baseline_phase(
    args: argparse.Namespace, port: int, server_pid: int, warmup: list[bytes], bodies: list[bytes]
) -> dict[str, Any]:
    url = f"http://{HOST}:{port}/v1/batch"
    headers = ingest_headers("bench-baseline", args.gzip)  # an Authorization header too; the bare handler ignores it
    async with client_session(args.concurrency, args.request_timeout) as session:
        if warmup:
            w = await drive(
                session,
                url,
                warmup,
                headers,
                events_per_body=args.batch_size,
                concurrency=args.concurrency,
                duration=None,
            )
            if w.failures:
                raise RuntimeError(f"baseline warm-up failed: {dict(w.failures)} {w.failure_sample}")
        passes = []
        for _ in range(args.baseline_passes):
            start = CpuMark.take(server_pid)
            d = await drive(
                session,
                url,
                bodies,
                headers,
                events_per_body=args.batch_size,
                concurrency=args.concurrency,
                duration=args.duration,
            )
            end = CpuMark.take(server_pid)
            one = summarize(d)
            one["cpu"] = cpu_between(start, end)
            one["server_cpu_us_per_event"] = _per_event(one["cpu"]["server_cpu_s"], d.events_acked)
            passes.append(one)
    # The bare run is ~20× shorter than the collector's: several passes over the same bodies, report the
    # median pass (failures of every pass are kept).
    ranked = sorted(passes, key=lambda one: one["acked_eps"])
    out = dict(ranked[len(ranked) // 2])
    out["passes"] = len(passes)
    out["passes_eps"] = [one["acked_eps"] for one in passes]
    failures: Counter[str] = Counter()
    for one in passes:
        failures.update(one["failures"])
    out["failures"] = dict(failures)
    out["failure_sample"] = next((one["failure_sample"] for one in passes if one["failure_sample"]), None)
    return out


async def run_collector_phase(
    args: argparse.Namespace,
    ports: tuple[int, int],
    server_pid: int,
    keys: dict[str, str],
    warmup: list[bytes],
    bodies: list[bytes],
    profiler: "Profiler | None",
) -> dict[str, Any]:
    url = f"http://{HOST}:{ports[0]}/v1/batch"
    stats_url = f"http://{HOST}:{ports[1]}/v1/stats"
    headers = ingest_headers(keys["write_key"], args.gzip)
    async with client_session(args.concurrency, args.request_timeout) as session:
        already = 0
        if warmup:
            w = await drive(
                session,
                url,
                warmup,
                headers,
                events_per_body=args.batch_size,
                concurrency=args.concurrency,
                duration=None,
            )
            if w.failures:
                raise RuntimeError(f"collector warm-up failed: {dict(w.failures)} {w.failure_sample}")
            # Start timing only once the warm-up is in ClickHouse, so its insert is not counted.
            t, already, _ = await wait_stored(
                session, stats_url, keys["read_key"], w.events_acked, args.store_timeout, args.poll_interval
            )
            if t is None:
                raise RuntimeError(
                    f"warm-up events not stored after {args.store_timeout}s ({already}/{w.events_acked})"
                )
        if profiler is not None:
            profiler.start()
        start = CpuMark.take(server_pid)
        d = await drive(
            session,
            url,
            bodies,
            headers,
            events_per_body=args.batch_size,
            concurrency=args.concurrency,
            duration=args.duration,
        )
        acked = CpuMark.take(server_pid)
        expected = already + d.events_acked
        t_stored, count, polls = await wait_stored(
            session, stats_url, keys["read_key"], expected, args.store_timeout, args.poll_interval
        )
        stored = CpuMark.take(server_pid)
        if profiler is not None:
            profiler.stop()
    out = summarize(d)
    out["cpu"] = cpu_between(start, acked)
    out["cpu_to_stored"] = cpu_between(start, stored)
    out["stats_polls"] = polls
    out["events_stored"] = count - already
    if t_stored is None:
        out["stored_s"] = None
        out["stored_eps"] = None
        out["drain_after_last_ack_s"] = None
        out["failures"]["not stored within --store-timeout"] = expected - count
    else:
        out["stored_s"] = t_stored - d.t_first
        out["stored_eps"] = d.events_acked / out["stored_s"]
        out["drain_after_last_ack_s"] = t_stored - d.t_last_ack
    out["server_cpu_us_per_event"] = _per_event(out["cpu_to_stored"]["server_cpu_s"], d.events_acked)
    return out


def _per_event(cpu_s: float | None, events: int) -> float | None:
    return None if cpu_s is None or not events else cpu_s / events * 1e6


# --------------------------------------------------------------------------------------------------------
# Subprocesses
# --------------------------------------------------------------------------------------------------------


def service_env(data_dir: Path, extra: list[str], **ports: int) -> dict[str, str]:
    """The environment for `journeys`: this one, less any JOURNEYS_*/store URLs (so the embedded default
    runs), plus the data dir, loopback hosts, the ports and any ``--env`` overrides."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("JOURNEYS_") and k not in ("CLICKHOUSE_URL", "DATABASE_URL")
    }
    env["JOURNEYS_DATA_DIR"] = str(data_dir)
    env["JOURNEYS_COLLECTOR_HOST"] = HOST
    env["JOURNEYS_QUERY_HOST"] = HOST
    env["JOURNEYS_RATE_LIMIT_WRITE_PER_S"] = "0"  # measure the pipeline, not the per-key limit
    for name, port in ports.items():
        env[f"JOURNEYS_{name.upper()}_PORT"] = str(port)
    for item in extra:
        key, _, value = item.partition("=")
        env[key] = value
    return env


class Service:
    """A subprocess we own: stdout+stderr to a log file, ready when a line starts with ``ready_prefix``."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")
        # A session of its own: a Ctrl-C at the terminal reaches only us, and we stop it in order.
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, ready_prefix: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            if any(line.startswith(ready_prefix) for line in text.splitlines()):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it was up:\n{self.tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not up after {timeout:.0f}s:\n{self.tail()}")

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait, then SIGKILL (the process and anything left in its process group)."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"bench: {self.name} ignored SIGTERM for {timeout:.0f}s; killing it", file=sys.stderr)
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def stop_stray_postgres(data_dir: Path) -> None:
    """The embedded PostgreSQL daemonizes (its parent is init), so a killed `journeys` can leave it behind.
    Stop it by the pid in its own postmaster.pid, only if that process really serves our data dir."""
    pgdata = data_dir / "postgres"
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return
    if str(pgdata) not in cmdline:
        return
    # The wheel stops it itself when `journeys` exits cleanly; give that a moment first.
    for sig, wait in ((None, 5.0), (signal.SIGINT, 15.0), (signal.SIGKILL, 5.0)):
        if sig is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.1)


class Profiler:
    """``py-spy record`` attached to the collector for the timed part of its phase."""

    def __init__(self, pid: int, out: Path, rate: int, native: bool, gil: bool):
        self.pid = pid
        self.out = out
        self.rate = rate
        self.native = native
        self.gil = gil
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        fmt = {".json": "speedscope", ".txt": "raw"}.get(self.out.suffix, "flamegraph")
        argv = [
            exe,
            "record",
            "--pid",
            str(self.pid),
            "--rate",
            str(self.rate),
            "--threads",
            "--format",
            fmt,
            "--output",
            str(self.out),
        ]
        if self.native:
            argv.append("--native")
        if self.gil:
            argv.append("--gil")
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        time.sleep(0.5)  # let it attach before the load starts
        if self.proc.poll() is not None:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            raise RuntimeError(f"py-spy failed to start: {err.strip()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# --------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ",.0f", suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:{spec}}{suffix}"


def render(report: dict[str, Any]) -> str:
    c, b, cfg = report["collector"], report["baseline"], report["config"]
    lines = [
        f"journeys ingest benchmark: {cfg['batches_sent_collector']} × {cfg['batch_size']}-event batches "
        f"({'gzip' if cfg['gzip'] else 'raw JSON'}, {cfg['mean_body_bytes']:,.0f} B/body on the wire, "
        f"{cfg['mean_raw_body_bytes']:,.0f} B raw), {cfg['concurrency']} in flight, loopback, {cfg['cpus']} CPUs",
        "",
        f"{'':34}{'collector':>16}{'bare aiohttp':>16}",
    ]

    def row(label: str, cv: str, bv: str) -> None:
        lines.append(f"{label:34}{cv:>16}{bv:>16}")

    row("requests 200 / sent", f"{c['requests_ok']}/{c['requests']}", f"{b['requests_ok']}/{b['requests']}")
    if b.get("passes", 1) > 1:
        lines.append(
            f"  (bare aiohttp: median of {b['passes']} passes over the same bodies; events/s of each: "
            + ", ".join(f"{eps:,.0f}" for eps in b["passes_eps"])
            + ")"
        )
    row("events acked", _fmt(c["events_acked"]), _fmt(b["events_acked"]))
    row("events stored (GET /v1/stats)", _fmt(c["events_stored"]), "n/a")
    row("stored events/s (end to end)", _fmt(c["stored_eps"]), "n/a")
    row("acked/parsed events/s", _fmt(c["acked_eps"]), _fmt(b["acked_eps"]))
    row("ack latency p50 (ms)", _fmt(c["ack_p50_ms"], ".1f"), _fmt(b["ack_p50_ms"], ".1f"))
    row("ack latency p99 (ms)", _fmt(c["ack_p99_ms"], ".1f"), _fmt(b["ack_p99_ms"], ".1f"))
    row("first request → last 200 (s)", _fmt(c["acked_s"], ".2f"), _fmt(b["acked_s"], ".2f"))
    row("last 200 → all stored (s)", _fmt(c["drain_after_last_ack_s"], ".2f"), "n/a")
    row("server CPU µs / event", _fmt(c["server_cpu_us_per_event"], ".1f"), _fmt(b["server_cpu_us_per_event"], ".1f"))
    row("server CPU (cores, under load)", _fmt(c["cpu"]["server_cores"], ".2f"), _fmt(b["cpu"]["server_cores"], ".2f"))
    row("load generator CPU (cores)", _fmt(c["cpu"]["loadgen_cores"], ".2f"), _fmt(b["cpu"]["loadgen_cores"], ".2f"))
    row("other processes CPU (cores)", _fmt(c["cpu"]["other_cores"], ".2f"), _fmt(b["cpu"]["other_cores"], ".2f"))
    row("failed requests", _fmt(sum(c["failures"].values())), _fmt(sum(b["failures"].values())))
    lines.append("")
    lines.append(
        f"ratio stored collector / bare = {_fmt(report['ratio_stored'], '.3f')}   "
        f"(acked collector / bare = {_fmt(report['ratio_acked'], '.3f')})   target ≥ {report['target']:.2f}"
    )
    for name, part in (("collector", c), ("bare aiohttp", b)):
        if part["failures"]:
            lines.append(f"!! {name} FAILURES: {part['failures']}  first: {part['failure_sample']}")
    for note in report["notes"]:
        lines.append(f"note: {note}")
    lines.append(("PASS" if report["pass"] else "FAIL") + f": {report['verdict']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Collector vs bare aiohttp ingest benchmark (loopback).")
    p.add_argument("--batches", type=int, default=5000, help="batches sent to each server (default 5000)")
    p.add_argument("--batch-size", type=int, default=100, help="events per batch (default 100)")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop sending to a server after this many seconds even if batches remain",
    )
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    p.add_argument("--warmup-batches", type=int, default=30, help="untimed batches first, per server (default 30)")
    p.add_argument(
        "--baseline-passes",
        type=int,
        default=5,
        help="timed passes over the bodies for the bare server; the median is reported (default 5)",
    )
    p.add_argument("--gzip", action=argparse.BooleanOptionalAction, default=True, help="gzip bodies (default on)")
    p.add_argument("--users", type=int, default=20_000, help="distinct userIds to draw from")
    p.add_argument("--seed", type=int, default=1, help="body generator seed")
    p.add_argument("--target", type=float, default=0.5, help="PASS when stored/bare ≥ this (default 0.5)")
    p.add_argument("--request-timeout", type=float, default=60.0, help="per-request timeout, s")
    p.add_argument("--store-timeout", type=float, default=180.0, help="give up waiting for /v1/stats after this, s")
    p.add_argument("--poll-interval", type=float, default=0.05, help="/v1/stats poll interval, s")
    p.add_argument("--only", choices=["collector", "baseline"], help="run one side only (no ratio)")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for `journeys up` (e.g. JOURNEYS_INSERT_LINGER_MS=5); repeatable",
    )
    p.add_argument(
        "--py-spy",
        type=Path,
        metavar="OUT",
        help="profile the collector's timed phase with py-spy (.svg flamegraph, .json speedscope, "
        ".txt collapsed); figures of a profiled run are perturbed",
    )
    p.add_argument("--py-spy-rate", type=int, default=100, help="py-spy samples/s (default 100)")
    p.add_argument("--py-spy-native", action="store_true", help="py-spy --native (C frames too)")
    p.add_argument("--py-spy-gil", action="store_true", help="py-spy --gil (only the thread holding the GIL)")
    p.add_argument("--tmp-dir", type=Path, default=None, help="where the temporary data dir goes")
    p.add_argument("--keep", action="store_true", help="keep the temporary dir (logs, data) and print its path")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of the table")
    p.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--max-request-bytes", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.batches, args.batch_size, args.concurrency, args.baseline_passes) < 1:
        p.error("--batches, --batch-size, --concurrency and --baseline-passes must be ≥ 1")
    for item in args.env:
        if "=" not in item:
            p.error(f"--env wants KEY=VALUE, not {item!r}")
    return args


def max_request_bytes() -> int:
    try:
        from journeys.config import Settings

        return int(Settings.model_fields["max_request_bytes"].default)
    except Exception:  # the bench also runs where journeys is not importable (baseline only)
        return DEFAULT_MAX_REQUEST_BYTES


class _Terminated(Exception):
    pass


def _on_sigterm(signum: int, _frame: Any) -> None:
    raise _Terminated(f"signal {signum}")


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_baseline is not None:
        serve_baseline(args.serve_baseline, args.max_request_bytes or max_request_bytes())
        return 0

    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="journeys-bench-", dir=args.tmp_dir))
    services: list[Service] = []
    profiler: Profiler | None = None
    data_dir = tmp / "data"
    limit = max_request_bytes()
    try:
        # ---- bodies, before anything is timed
        began = time.perf_counter()
        factory = EventFactory(args.seed, args.users)
        warmup, _ = make_bodies(factory, args.warmup_batches, args.batch_size, args.gzip)
        bodies, raw_bytes = make_bodies(factory, args.batches, args.batch_size, args.gzip)
        wire_bytes = sum(len(b) for b in bodies)
        if raw_bytes / len(bodies) > limit:
            raise RuntimeError(f"bodies average {raw_bytes / len(bodies):,.0f} B, over the {limit} B request limit")
        gc.collect()
        gc.freeze()  # the bodies are long-lived; keep the collector's generations small during the run
        log(
            f"generated {args.batches + args.warmup_batches} bodies in {time.perf_counter() - began:.1f}s "
            f"({wire_bytes / len(bodies):,.0f} B on the wire, {raw_bytes / len(bodies):,.0f} B raw each)"
        )

        baseline: dict[str, Any] | None = None
        collector: dict[str, Any] | None = None

        # ---- baseline: bare aiohttp in its own process
        if args.only in (None, "baseline"):
            port = free_port()
            svc = Service(
                "baseline",
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--serve-baseline",
                    str(port),
                    "--max-request-bytes",
                    str(limit),
                ],
                dict(os.environ),
                tmp / "baseline.log",
            )
            services.append(svc)
            svc.wait_ready("baseline is up", START_TIMEOUT_S)
            log(f"baseline up (pid {svc.pid}); driving it")
            baseline = asyncio.run(run_baseline_phase(args, port, svc.pid, warmup, bodies))
            svc.stop()
            log(f"baseline: {baseline['acked_eps']:,.0f} events/s parsed")

        # ---- collector: `journeys project create`, then `journeys up`
        if args.only in (None, "collector"):
            env = service_env(data_dir, args.env)
            created = subprocess.run(
                [sys.executable, "-m", "cli.main", "project", "create", "bench", "--json"],
                env=env,
                capture_output=True,
                timeout=START_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
            stop_stray_postgres(data_dir)
            if created.returncode != 0:
                raise RuntimeError(f"journeys project create failed: {created.stderr.decode(errors='replace')}")
            keys = orjson.loads(created.stdout.strip().splitlines()[-1])
            ports = (free_port(), free_port())
            while ports[1] == ports[0]:
                ports = (ports[0], free_port())
            env = service_env(data_dir, args.env, collector=ports[0], query=ports[1])
            svc = Service("journeys up", [sys.executable, "-m", "cli.main", "up"], env, tmp / "journeys.log")
            services.append(svc)
            svc.wait_ready("journeys is up:", START_TIMEOUT_S)
            log(f"journeys up (pid {svc.pid}, collector :{ports[0]}, query :{ports[1]}); driving it")
            profiler = (
                Profiler(svc.pid, args.py_spy.resolve(), args.py_spy_rate, args.py_spy_native, args.py_spy_gil)
                if args.py_spy
                else None
            )
            collector = asyncio.run(run_collector_phase(args, ports, svc.pid, keys, warmup, bodies, profiler))
            code = svc.stop()
            stop_stray_postgres(data_dir)
            if code not in (0, None):
                log(f"journeys up exited with {code} on SIGTERM:\n{svc.tail()}")
            log(f"collector: {_fmt(collector['stored_eps'])} events/s stored, {collector['acked_eps']:,.0f} acked")
            if profiler is not None:
                log(f"py-spy profile written to {profiler.out}")

        # ---- report
        report: dict[str, Any] = {
            "config": {
                "batches": args.batches,
                "batches_sent_collector": collector["requests"] if collector else 0,
                "batches_sent_baseline": baseline["requests"] if baseline else 0,
                "batch_size": args.batch_size,
                "concurrency": args.concurrency,
                "warmup_batches": args.warmup_batches,
                "duration": args.duration,
                "gzip": args.gzip,
                "mean_body_bytes": wire_bytes / len(bodies),
                "mean_raw_body_bytes": raw_bytes / len(bodies),
                "seed": args.seed,
                "cpus": os.cpu_count(),
                "env": args.env,
                "profiled": bool(args.py_spy),
            },
            "collector": collector,
            "baseline": baseline,
            "target": args.target,
            "notes": [],
        }
        problems = []
        for name, part in (("collector", collector), ("baseline", baseline)):
            if part and part["failures"]:
                problems.append(f"{name} had failures {part['failures']}")
        if collector and baseline:
            report["ratio_stored"] = (
                (collector["stored_eps"] / baseline["acked_eps"]) if collector["stored_eps"] else None
            )
            report["ratio_acked"] = collector["acked_eps"] / baseline["acked_eps"]
            if report["ratio_stored"] is None:
                problems.append("collector did not store every acknowledged event")
            elif report["ratio_stored"] < args.target:
                problems.append(f"stored ratio {report['ratio_stored']:.3f} < {args.target}")
            if (baseline["cpu"]["loadgen_cores"] or 0) > 0.7:
                report["notes"].append(
                    f"the load generator used {baseline['cpu']['loadgen_cores']:.2f} cores during the bare run: "
                    "the bare figure is partly client-bound, so if anything the ratio flatters the collector"
                )
        else:
            report["ratio_stored"] = report["ratio_acked"] = None
            problems.append("only one side was run: no ratio")
        for name, part in (("collector", collector), ("baseline", baseline)):
            other = part["cpu"]["other_cores"] if part else None
            if other is not None and other > 0.25:
                report["notes"].append(f"other processes used {other:.2f} cores during the {name} run (noisy machine)")
        if args.py_spy:
            report["notes"].append("py-spy was attached to the collector: its figures are perturbed")
        report["pass"] = not problems
        report["verdict"] = (
            "; ".join(problems)
            if problems
            else (f"stored ratio {report['ratio_stored']:.3f} ≥ {args.target} with no failed requests")
        )
        if args.json:
            print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        elif collector and baseline:
            print(render(report))
        else:
            print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return 0 if report["pass"] else 1
    except (_Terminated, KeyboardInterrupt) as exc:
        log(f"interrupted ({exc or 'Ctrl-C'}); stopping subprocesses")
        return 2
    except Exception as exc:
        log(f"error: {exc}")
        for svc in services:
            if svc.proc.poll() is not None and svc.proc.returncode not in (0,):
                log(f"{svc.name} log tail:\n{svc.tail()}")
        return 2
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish cleaning up even if told again
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if profiler is not None:
            profiler.stop()
        for svc in reversed(services):
            svc.stop()
        stop_stray_postgres(data_dir)
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
