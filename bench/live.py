#!/usr/bin/env python3
"""Live-under-load probe: does the service stay live (KPIs and journeys fresh, KPI calls fast) while the
collector takes a sustained stream of events at a fixed offered rate?

What it does, on loopback only (127.0.0.1):

1. Opens the embedded stores (chDB + embedded PostgreSQL) in a fresh temporary data dir (or ``--data-dir``),
   creates a project, applies the five-stage template map (cli/templates/five-stage.yaml) and the four
   segments of bench/query.py, and starts the query service (``query.app.create_app``) and the collector
   (``collector.app.create_app``, its spool in DATA_DIR/bench-spool) **in this process**, on one event loop,
   with the garbage-collector tuning of ``journeys up``: the embedded default deployment. It waits until
   ``GET /v1/kpis`` answers 200 (the first, empty build).
2. For each offered rate (``--rates``, events/s), a **load generator in a separate process** (multiprocessing,
   spawn: it does not compete for the service's GIL) POSTs batches of 100 events to ``/v1/batch`` (Segment
   ``{"batch": [...]}``, Basic auth with the write key) paced by the wall clock: every 10 ms it queues the
   batches due since the start (rate / 100 per second), and ``--connections`` senders take them, so one
   slow answer does not stop the offered rate. A batch is built when it is sent: 100 events for customers
   drawn uniformly from ``--customers`` (``c-<n>``; nearly every event touches a different customer), with
   the five-stage map's touchpoints (Product Viewed/web, the home page, Email Clicked/email, Order
   Completed/web, Store Purchase/store, Review Submitted with a rating, call-centre calls with a topic) and
   ~30 % events no touchpoint matches, timestamped now, each with a unique ``messageId``. If more than one
   second of batches is waiting for a sender, newer ones are dropped and counted as *unsent* (the offered
   rate was not delivered). Only an HTTP 200 counts as acked; other statuses and exceptions are counted apart.
   Every rate runs ``--warmup`` seconds (default 5) before ``--seconds`` measured seconds (default 30).
3. While the load runs (the measured seconds), this process, with its own aiohttp session, measures:

   * **acked events/s**: events in batches answered 200 within the measured seconds / those seconds, and its
     ratio to the offered rate (counted by the generator);
   * **KPI and journey freshness**: every ``--probe-every`` s (2) one probe batch to the collector: an
     ``Order Completed``/web track event for a brand-new customer ``probe-<rate>-<n>``, stamped on a day of
     its own in 2001 (2001-01-01 plus one day per probe; no load event is that old, and the collector keeps
     client timestamps from 2000 on as sent when no ``sentAt`` comes along). From the probe's 200 answer two
     pollers run side by side, back to back with a 20 ms sleep (one call in flight each: with several probes
     outstanding, each poller checks them in turn, so the polling load does not grow with a backlog):
     (a) ``GET /v1/kpis?map=five-stage&from=D&to=D`` (read key) until the purchase stage's ``entered`` is 1 —
     a window holding only that probe's day, so one probe never counted does not hide the next (``reached``
     would count the earlier probes' days too);
     (b) ``GET /v1/customers/probe-…/journey?map=five-stage`` until the journey holds the probe's
     ``messageId``. A probe not counted within ``--probe-timeout`` (30 s) is *missed* and enters the
     percentiles as infinite. Probes sent in the measured seconds are awaited with the load still running;
   * **/v1/kpis latency**: every 0.5 s a ``GET /v1/kpis?map=five-stage`` (default 30-day window, all
     customers), timed by this process: p50/p95;
   * the query service's ``journeys_kpi_freshness_seconds`` gauge (``/metrics``, every second): its maximum
     and its value at the end of the measured seconds;
   * CPU: this process (the whole service: event loop, chDB, PostgreSQL client) and the generator's, in cores.

   Between rates it waits (at most ``--settle-timeout``) until that gauge is below 1 s, so a rate does not
   start behind the previous one's backlog.
4. Prints one table row per rate, then the targets at 10k and 20k events/s offered (``--target-rates``):
   acked ≥ 95 % of offered, KPI freshness p95 ≤ 1 s, journey freshness p95 ≤ 0.5 s, /v1/kpis p50 ≤ 200 ms,
   met or missed each, and the highest offered rate at which all four hold. When no target rate was run
   (``--quick``) the targets are checked at every rate run, and the output says so. ``--json FILE`` writes
   the figures.

The embedded PostgreSQL is a child of this process's stores and is stopped with them; the generator is
stopped by message, then terminated if it does not exit. Both also stop if this process dies (the
generator watches its parent).

    . .venv/bin/activate && python bench/live.py --quick      # 1000 and 5000 events/s, 10 s each, ~1.5 min
    python bench/live.py                                       # 1k, 5k, 10k, 20k events/s, 30 s each, ~4 min
    python bench/live.py --rates 5000 --seconds 15 --json /tmp/live.json

Exit status: 0 every target met (at 10k and 20k offered), 1 some target missed, 2 the benchmark could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import multiprocessing
import os
import random
import re
import sys
import time
from datetime import date, datetime, timedelta, timezone
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

BATCH = 100  # events per load batch
# Run as a script, this file's directory comes first on sys.path and its name would shadow the `query`
# package it measures.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]
from benchlib import HOST, basic, five_stage_project, free_port, log, pct, run_and_report  # noqa: E402 - the sibling, then

sys.path.remove(str(_HERE))  # ... off the path again, before anything imports the `query` package

TARGETS = {"acked_ratio": 0.95, "kpi_freshness_p95_s": 1.0, "journey_freshness_p95_s": 0.5, "kpi_p50_ms": 200.0}
PROBE_DAY0 = date(2001, 1, 1)  # probe n is stamped on PROBE_DAY0 + n days: no load event is that old
PROBE_STAGE = "purchase"  # Order Completed / web is the map's order-online touchpoint


# --------------------------------------------------------------------------------------------------------
# Helpers (as bench/query.py)
# --------------------------------------------------------------------------------------------------------


def iso_now_z() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def finite(value: float | None, digits: int = 3) -> float | None:
    """For JSON: a rounded number, ``None`` for none or infinite (a missed probe)."""
    return None if value is None or value == float("inf") else round(value, digits)


# --------------------------------------------------------------------------------------------------------
# The load generator (a separate process)
# --------------------------------------------------------------------------------------------------------

_PRODUCTS = [{"product_id": f"sku-{k:05d}", "price": 49.9} for k in range(0, 5000, 97)]
_CAMPAIGNS = [{"campaign_id": f"cmp-{k:04d}"} for k in range(0, 300, 7)]
# (weight, event without ids and timestamp, property variants): touchpoints of the five-stage map, then noise.
_KINDS: list[tuple[int, dict[str, Any], list[dict[str, Any]]]] = [
    (28, {"type": "track", "event": "Product Viewed", "channel": "web"}, _PRODUCTS),
    (12, {"type": "page", "name": "Home", "channel": "web"}, [{"path": "/", "url": "https://shop.example.com/"}]),
    (8, {"type": "track", "event": "Email Clicked", "channel": "email"}, _CAMPAIGNS),
    (
        6,
        {"type": "track", "event": "Order Completed", "channel": "web"},
        [{"order_number": 1, "revenue": r} for r in (19.9, 49.9, 120.0)],
    ),
    (3, {"type": "track", "event": "Store Purchase", "channel": "store"}, [{"order_number": 1, "revenue": 80.0}]),
    (4, {"type": "track", "event": "Review Submitted", "channel": "web"}, [{"rating": r} for r in range(1, 6)]),
    (
        5,
        {"type": "track", "event": "Call Started", "channel": "call_centre"},
        [{"topic": t} for t in ("product", "pricing", "availability")]
        + [{"topic": t, "satisfaction": s} for t in ("support", "complaint") for s in (1, 3, 5)],
    ),
    # matching no touchpoint (~30 %)
    (10, {"type": "track", "event": "App Opened", "channel": "app"}, [{}]),
    (8, {"type": "track", "event": "Email Delivered", "channel": "email"}, _CAMPAIGNS),
    (
        8,
        {"type": "page", "name": "Pricing", "channel": "web"},
        [{"path": "/pricing", "url": "https://shop.example.com/pricing"}],
    ),
    (4, {"type": "track", "event": "Push Opened", "channel": "push"}, [{}]),
]


class _BatchMaker:
    def __init__(self, customers: int, seed: int, tag: str):
        self.rng = random.Random(seed)
        self.customers = customers
        self.tag = tag
        self.seq = 0
        # 10 000 pre-drawn (event, properties) pairs, cycled from a random offset per batch: the draw's cost
        # stays out of the generator's hot path.
        kinds = self.rng.choices(_KINDS, weights=[k[0] for k in _KINDS], k=10_000)
        self.pool = [(base, self.rng.choice(variants)) for _, base, variants in kinds]

    def body(self) -> bytes:
        ts = iso_now_z()
        rng, pool, customers = self.rng, self.pool, self.customers
        start = rng.randrange(len(pool) - BATCH)
        events = []
        for k in range(BATCH):
            base, props = pool[start + k]
            self.seq += 1
            event = dict(base)
            event["userId"] = f"c-{rng.randrange(customers)}"
            event["messageId"] = f"{self.tag}-{self.seq}"
            event["timestamp"] = ts
            event["properties"] = props
            events.append(event)
        return orjson.dumps({"batch": events})


@dataclasses.dataclass
class _Counts:
    acked_batches: int = 0
    acked_events: int = 0
    statuses: dict[str, int] = dataclasses.field(default_factory=dict)  # non-200 answers
    exceptions: dict[str, int] = dataclasses.field(default_factory=dict)
    queued: int = 0  # batches due and queued for a sender
    unsent: int = 0  # batches due but dropped: over a second of batches was waiting for a sender
    latencies_ms: list[float] = dataclasses.field(default_factory=list)  # of the 200s


def load_process(conn: Any, cfg: dict[str, Any]) -> None:
    """Entry point of the generator process (spawned): reports ``ready``, waits for ``go``, sends until
    ``stop`` (or its parent dies), then sends back its counts."""
    try:
        result = asyncio.run(_load(conn, cfg))
    except BaseException as exc:  # noqa: BLE001 - the parent must hear why
        result = {"error": repr(exc)}
    try:
        conn.send(result)
    except (BrokenPipeError, OSError):
        pass


async def _load(conn: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    parent = os.getppid()
    rate, url, headers = cfg["rate"], cfg["url"], {**basic(cfg["write_key"]), "Content-Type": "application/json"}
    maker = _BatchMaker(cfg["customers"], cfg["seed"], cfg["tag"])
    maker.body()  # warm
    conn.send({"ready": True})
    if not await asyncio.to_thread(conn.poll, 60):
        return {"error": "no go within 60 s"}
    go = conn.recv()
    start, measure_from, measure_to = go["start"], go["measure_from"], go["measure_to"]
    hard_stop = measure_to + cfg["max_tail_s"]

    window, total = _Counts(), _Counts()
    per_second = [0] * (int(measure_to - measure_from) + 1)  # acked events per measured second
    queue: asyncio.Queue[float] = asyncio.Queue()
    backlog_cap = max(1, rate // BATCH)  # one second of batches
    stopping = asyncio.Event()

    async def producer() -> None:
        produced, tick, next_at = 0, 0.010, start
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        while not stopping.is_set():
            now = time.monotonic()
            due = int((now - start) * rate / BATCH) - produced
            for _ in range(max(0, due)):
                produced += 1
                counts = (window, total) if measure_from <= now < measure_to else (total,)
                if queue.qsize() >= backlog_cap:
                    for c in counts:
                        c.unsent += 1
                else:
                    queue.put_nowait(now)
                    for c in counts:
                        c.queued += 1
            next_at += tick
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def sender(http: aiohttp.ClientSession) -> None:
        while True:
            await queue.get()
            body = maker.body()
            began = time.monotonic()
            status, error = 0, ""
            try:
                async with http.post(url, data=body, headers=headers) as r:
                    await r.read()
                    status = r.status
            except Exception as exc:  # noqa: BLE001 - counted, the load goes on
                error = type(exc).__name__
            done = time.monotonic()
            counts = (window, total) if measure_from <= done < measure_to else (total,)
            for c in counts:
                if status == 200:
                    c.acked_batches += 1
                    c.acked_events += BATCH
                elif error:
                    c.exceptions[error] = c.exceptions.get(error, 0) + 1
                else:
                    c.statuses[str(status)] = c.statuses.get(str(status), 0) + 1
            if status == 200 and measure_from <= done < measure_to:
                per_second[int(done - measure_from)] += BATCH
                window.latencies_ms.append((done - began) * 1000)

    cpu0 = time.process_time()
    timeout = aiohttp.ClientTimeout(total=cfg["request_timeout_s"])
    connector = aiohttp.TCPConnector(limit=cfg["connections"], limit_per_host=cfg["connections"])
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        tasks = [asyncio.create_task(producer())] + [
            asyncio.create_task(sender(http)) for _ in range(cfg["connections"])
        ]
        while True:  # until told to stop, the parent is gone, or far past the measured seconds
            if await asyncio.to_thread(conn.poll, 0.2):
                conn.recv()
                break
            if os.getppid() != parent or time.monotonic() > hard_stop:
                break
        stopping.set()
        drained_by = time.monotonic() + 5
        while (not queue.empty()) and time.monotonic() < drained_by:  # let queued batches go, briefly
            await asyncio.sleep(0.05)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    cpu_s = time.process_time() - cpu0
    lat = window.latencies_ms
    return {
        "window": {k: v for k, v in dataclasses.asdict(window).items() if k != "latencies_ms"},
        "total": {k: v for k, v in dataclasses.asdict(total).items() if k != "latencies_ms"},
        "ack_latency_ms": {
            "p50": finite(pct(lat, 50), 1),
            "p99": finite(pct(lat, 99), 1),
            "max": finite(max(lat) if lat else None, 1),
        },
        "acked_per_second": per_second[: int(measure_to - measure_from)],
        "cpu_s": round(cpu_s, 2),
        "ran_s": round(time.monotonic() - start, 2),
    }


# --------------------------------------------------------------------------------------------------------
# The measurements in this process
# --------------------------------------------------------------------------------------------------------


async def timed_get(
    http: aiohttp.ClientSession, url: str, params: dict[str, str] | None, key: str | None
) -> tuple[float, int, Any]:
    began = time.perf_counter()
    async with http.get(url, params=params, headers=basic(key) if key else None) as r:
        body = await r.read()
        status = r.status
    took = time.perf_counter() - began
    if status == 200 and r.content_type == "application/json":
        return took, status, orjson.loads(body)
    return took, status, body


def stage_entered(body: dict[str, Any], stage_id: str) -> int:
    """``entered`` of a stage, all customers. (Not ``reached``: that counts entries before the window too,
    here the earlier probes' days.)"""
    for stage in body["segments"][0]["stages"]:
        if stage["id"] == stage_id:
            return stage["entered"]
    raise RuntimeError(f"no stage {stage_id!r} in the KPI answer")


async def freshness_gauge(http: aiohttp.ClientSession, qurl: str) -> float | None:
    try:
        _, status, body = await timed_get(http, f"{qurl}/metrics", None, None)
    except aiohttp.ClientError:
        return None
    if status != 200:
        return None
    found = re.findall(rb"^journeys_kpi_freshness_seconds (\S+)$", body, re.M)
    return float(found[0]) if found else None


async def updater_step_seconds(http: aiohttp.ClientSession, qurl: str) -> dict[str, tuple[float, float]]:
    """The updater's time so far in each step of keeping the facts current, and how many times it took it
    (``journeys_stage_state_step_seconds`` sum and count, by step)."""
    _, status, body = await timed_get(http, f"{qurl}/metrics", None, None)
    if status != 200:
        return {}
    text = body.decode()
    sums = dict(re.findall(r'^journeys_stage_state_step_seconds_sum\{step="(\w+)"\} (\S+)$', text, re.M))
    counts = dict(re.findall(r'^journeys_stage_state_step_seconds_count\{step="(\w+)"\} (\S+)$', text, re.M))
    steps = {step: (float(sums[step]), float(counts.get(step, 0))) for step in sums}
    # The KPI cache's hits and misses ride along as two pseudo-steps (query/kpi_cache.py).
    for result, count in re.findall(r'^journeys_kpi_cache_total\{result="(\w+)"\} (\S+)$', text, re.M):
        steps[f"kpi_cache_{result}"] = (0.0, float(count))
    return steps


def _delta(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], name: str) -> int:
    return int(after.get(name, (0.0, 0.0))[1] - before.get(name, (0.0, 0.0))[1])


@dataclasses.dataclass
class Service:
    curl: str
    qurl: str
    write_key: str
    read_key: str


@dataclasses.dataclass
class _Probe:
    n: int
    day: date
    customer: str
    message_id: str
    acked: float  # perf_counter() at its 200


class Probes:
    """Freshness probes: ``launch`` POSTs one; two pollers (KPIs, journey) each check every outstanding probe
    in turn, one call at a time, then sleep 20 ms. With one probe outstanding (freshness under the probe
    interval) that is a back-to-back poll of it; with several, the polling load stays one call in flight per
    poller instead of growing with the backlog (which would slow the service it measures), at the cost of a
    resolution of one call per outstanding probe."""

    POLL_SLEEP_S = 0.02

    def __init__(self, http: aiohttp.ClientSession, svc: Service, rate: int, first_index: int, timeout_s: float):
        self.http, self.svc, self.rate, self.timeout_s = http, svc, rate, timeout_s
        self.index = first_index  # global probe number: its day
        self.kpi_s: list[float] = []
        self.journey_s: list[float] = []
        self.kpi_missed = self.journey_missed = 0
        self.post_failed: dict[str, int] = {}
        self.posts: list[asyncio.Task[None]] = []
        self.kpi_waiting: dict[int, _Probe] = {}
        self.journey_waiting: dict[int, _Probe] = {}
        self.sent = 0
        self.kpi_polls = self.journey_polls = 0
        self._done = asyncio.Event()
        self._pollers = [
            asyncio.create_task(self._poll(self.kpi_waiting, self._counted_in_kpis, "kpi")),
            asyncio.create_task(self._poll(self.journey_waiting, self._in_journey, "journey")),
        ]

    def launch(self) -> None:
        self.posts.append(asyncio.create_task(self._post(self.sent, self.index)))
        self.sent += 1
        self.index += 1

    async def finish(self) -> None:
        """Wait for every probe to be counted or missed (each gives up ``timeout_s`` after its 200)."""
        await asyncio.gather(*self.posts)
        while self.kpi_waiting or self.journey_waiting:
            await asyncio.sleep(0.05)
        self._done.set()
        await asyncio.gather(*self._pollers)

    def cancel(self) -> None:
        for task in [*self.posts, *self._pollers]:
            task.cancel()

    async def _post(self, n: int, index: int) -> None:
        day = PROBE_DAY0 + timedelta(days=index)
        customer = f"probe-{self.rate}-{n}"
        message_id = f"probe-{self.rate}-{n}-{time.time_ns()}"
        event = {
            "type": "track",
            "event": "Order Completed",
            "channel": "web",
            "userId": customer,
            "messageId": message_id,
            "timestamp": f"{day.isoformat()}T00:{n % 60:02d}:00.000Z",
            "properties": {"order_number": 1, "revenue": 10.0},
        }
        try:
            async with self.http.post(
                f"{self.svc.curl}/v1/batch", json={"batch": [event]}, headers=basic(self.svc.write_key)
            ) as r:
                await r.read()
                status = r.status
        except Exception as exc:  # noqa: BLE001
            self.post_failed[type(exc).__name__] = self.post_failed.get(type(exc).__name__, 0) + 1
            return
        if status != 200:
            self.post_failed[str(status)] = self.post_failed.get(str(status), 0) + 1
            return
        probe = _Probe(n, day, customer, message_id, time.perf_counter())
        self.kpi_waiting[n] = self.journey_waiting[n] = probe

    async def _counted_in_kpis(self, probe: _Probe) -> bool:
        params = {"map": "five-stage", "from": probe.day.isoformat(), "to": probe.day.isoformat()}
        _, status, body = await timed_get(self.http, f"{self.svc.qurl}/v1/kpis", params, self.svc.read_key)
        return status == 200 and stage_entered(body, PROBE_STAGE) >= 1

    async def _in_journey(self, probe: _Probe) -> bool:
        url = f"{self.svc.qurl}/v1/customers/{probe.customer}/journey"
        _, status, body = await timed_get(self.http, url, {"map": "five-stage"}, self.svc.read_key)
        return status == 200 and any(t["message_id"] == probe.message_id for t in body["touchpoints"])

    async def _poll(self, waiting: dict[int, _Probe], check: Any, what: str) -> None:
        times = self.kpi_s if what == "kpi" else self.journey_s
        while not self._done.is_set():
            for n, probe in sorted(waiting.items()):
                try:
                    found = await check(probe)
                except Exception:  # noqa: BLE001 - a failed poll is retried until the timeout
                    found = False
                if what == "kpi":
                    self.kpi_polls += 1
                else:
                    self.journey_polls += 1
                took = time.perf_counter() - probe.acked
                if found:
                    times.append(took)
                elif took > self.timeout_s:
                    times.append(float("inf"))
                    if what == "kpi":
                        self.kpi_missed += 1
                    else:
                        self.journey_missed += 1
                else:
                    continue
                del waiting[n]
            await asyncio.sleep(self.POLL_SLEEP_S)


async def measure_rate(
    ctx: Any, http: aiohttp.ClientSession, svc: Service, rate: int, probe_index: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One offered rate: the generator process, and probes, KPI calls and the gauge from here."""
    parent_conn, child_conn = ctx.Pipe()
    cfg = {
        "rate": rate,
        "url": f"{svc.curl}/v1/batch",
        "write_key": svc.write_key,
        "customers": args.customers,
        "seed": args.seed + rate,
        "tag": f"l{os.getpid()}-{rate}-{time.time_ns() % 10**9}",
        "connections": args.connections,
        "request_timeout_s": 30.0,
        "max_tail_s": args.probe_timeout + 30,
    }
    proc = ctx.Process(target=load_process, args=(child_conn, cfg), name=f"live-load-{rate}", daemon=True)
    proc.start()
    child_conn.close()
    probes: Probes | None = None
    try:
        if not await asyncio.to_thread(parent_conn.poll, 60):
            raise RuntimeError("the load generator did not start within 60 s")
        hello = parent_conn.recv()
        if "error" in hello:
            raise RuntimeError(f"load generator: {hello['error']}")
        start = time.monotonic() + 0.1
        measure_from = start + args.warmup
        measure_to = measure_from + args.seconds
        parent_conn.send({"start": start, "measure_from": measure_from, "measure_to": measure_to})
        log(f"{rate:,} events/s offered: {args.warmup:g} s warm-up, then {args.seconds:g} s measured")

        await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
        cpu0, wall0 = time.process_time(), time.monotonic()
        steps0 = await updater_step_seconds(http, svc.qurl)
        probes = Probes(http, svc, rate, probe_index, args.probe_timeout)
        kpi_ms: list[float] = []
        kpi_errors: dict[str, int] = {}
        gauge: list[float] = []
        gauge_series: list[tuple[float, float]] = []  # (seconds into the measured window, gauge)

        async def probe_loop() -> None:
            at = measure_from + 0.25
            while at < measure_to:
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                probes.launch()
                at += args.probe_every

        async def kpi_loop() -> None:
            at = measure_from
            while at < measure_to:
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                try:
                    took, status, _ = await timed_get(http, f"{svc.qurl}/v1/kpis", {"map": "five-stage"}, svc.read_key)
                except Exception as exc:  # noqa: BLE001
                    kpi_errors[type(exc).__name__] = kpi_errors.get(type(exc).__name__, 0) + 1
                else:
                    if status == 200:
                        kpi_ms.append(took * 1000)
                    else:
                        kpi_errors[str(status)] = kpi_errors.get(str(status), 0) + 1
                at = max(at + 0.5, time.monotonic())  # a call slower than 0.5 s: the next one right after

        async def gauge_loop() -> None:
            at = measure_from + 0.5
            while at < measure_to:
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                value = await freshness_gauge(http, svc.qurl)
                if value is not None:
                    gauge.append(value)
                    gauge_series.append((round(time.monotonic() - measure_from, 1), value))
                at += 1.0

        await asyncio.gather(probe_loop(), kpi_loop(), gauge_loop())
        await asyncio.sleep(max(0.0, measure_to - time.monotonic()))  # the loops' last calls end before it
        service_cpu = time.process_time() - cpu0
        service_wall = time.monotonic() - wall0
        steps1 = await updater_step_seconds(http, svc.qurl)
        gauge_end = await freshness_gauge(http, svc.qurl)
        tail0 = time.monotonic()
        await probes.finish()  # each probe gives up --probe-timeout after its 200; the load still runs meanwhile
        probes_tail_s = time.monotonic() - tail0

        parent_conn.send({"stop": True})
        if not await asyncio.to_thread(parent_conn.poll, 30):
            raise RuntimeError("the load generator sent no counts within 30 s of stop")
        load = parent_conn.recv()
        if "error" in load:
            raise RuntimeError(f"load generator: {load['error']}")
    finally:
        if probes is not None:
            probes.cancel()  # done by now, unless something failed
        await asyncio.to_thread(proc.join, 10)
        if proc.is_alive():
            proc.terminate()
            await asyncio.to_thread(proc.join, 5)
        if proc.is_alive():
            proc.kill()
            await asyncio.to_thread(proc.join, 5)
        parent_conn.close()

    w = load["window"]
    acked_per_s = w["acked_events"] / args.seconds
    return {
        "offered_per_s": rate,
        "measured_s": args.seconds,
        "acked_per_s": round(acked_per_s),
        "acked_ratio": round(acked_per_s / rate, 3),
        "load": {
            "acked_batches": w["acked_batches"],
            "non_200": w["statuses"],
            "exceptions": w["exceptions"],
            "queued_batches": w["queued"],
            "unsent_batches": w["unsent"],
            "ack_latency_ms": load["ack_latency_ms"],
            "acked_per_second": load["acked_per_second"],
            "whole_run": load["total"],
            "generator_cpu_cores": round(load["cpu_s"] / load["ran_s"], 2) if load["ran_s"] else None,
        },
        "kpi_freshness_s": {
            "p50": finite(pct(probes.kpi_s, 50)),
            "p95": finite(pct(probes.kpi_s, 95)),
            "max": finite(max(probes.kpi_s) if probes.kpi_s else None),
            "missed": probes.kpi_missed,
        },
        "journey_freshness_s": {
            "p50": finite(pct(probes.journey_s, 50)),
            "p95": finite(pct(probes.journey_s, 95)),
            "max": finite(max(probes.journey_s) if probes.journey_s else None),
            "missed": probes.journey_missed,
        },
        "probes": {
            "sent": probes.sent,
            "post_failed": probes.post_failed,
            "kpi_polls": probes.kpi_polls,
            "journey_polls": probes.journey_polls,
            "awaited_after_window_s": round(probes_tail_s, 1),
            "kpi_missed": probes.kpi_missed,
            "journey_missed": probes.journey_missed,
            "first_day": (PROBE_DAY0 + timedelta(days=probe_index)).isoformat(),
        },
        "kpi_call_ms": {
            "p50": finite(pct(kpi_ms, 50), 1),
            "p95": finite(pct(kpi_ms, 95), 1),
            "max": finite(max(kpi_ms) if kpi_ms else None, 1),
            "calls": len(kpi_ms),
            "errors": kpi_errors,
        },
        "freshness_gauge_s": {
            "end": finite(gauge_end, 2),
            "max": finite(max(gauge) if gauge else None, 2),
            "p50": finite(pct(gauge, 50), 2),
            "samples": len(gauge),
            "series": [(t, round(v, 2)) for t, v in gauge_series],
        },
        "service_cpu_cores": round(service_cpu / service_wall, 2) if service_wall else None,
        # Of the measured seconds, the share the updater spent in each step, and how often it took it per second:
        # where its time goes under this load (the Grafana panel "Stage facts: time per step").
        "updater_steps": {
            step: {
                "busy": round((total - steps0.get(step, (0.0, 0.0))[0]) / service_wall, 3),
                "per_s": round((count - steps0.get(step, (0.0, 0.0))[1]) / service_wall, 2),
            }
            for step, (total, count) in sorted(steps1.items())
            if not step.startswith("kpi_cache_")
        }
        if service_wall
        else {},
        # KPI answers (every caller's: probes, the latency loop) reused from the cache in the measured seconds.
        "kpi_answers_reused": _delta(steps0, steps1, "kpi_cache_hit"),
        "kpi_answers_computed": _delta(steps0, steps1, "kpi_cache_miss"),
    }


def verdict_of(row: dict[str, Any]) -> dict[str, bool]:
    def at_most(value: float | None, limit: float) -> bool:
        return value is not None and value <= limit

    probes_ok = row["probes"]["sent"] > 0 and not row["probes"]["post_failed"]
    return {
        "acked_ratio": row["acked_ratio"] >= TARGETS["acked_ratio"],
        "kpi_freshness_p95": probes_ok and at_most(row["kpi_freshness_s"]["p95"], TARGETS["kpi_freshness_p95_s"]),
        "journey_freshness_p95": probes_ok
        and at_most(row["journey_freshness_s"]["p95"], TARGETS["journey_freshness_p95_s"]),
        "kpi_p50": at_most(row["kpi_call_ms"]["p50"], TARGETS["kpi_p50_ms"]),
    }


@contextlib.asynccontextmanager
async def serving(stores: Any, project: Any) -> AsyncIterator[Service]:
    """The collector and the query service in this process on loopback, over ``stores``, as `journeys up` runs
    them (its GC tuning included): the project's :class:`Service` while they run."""
    from collector.app import create_app as create_collector
    from journeys.metrics import Metrics
    from query.app import create_app as create_query

    query_runner = web.AppRunner(create_query(stores, Metrics()), access_log=None, handle_signals=False)
    collector_stores = dataclasses.replace(
        stores,
        settings=stores.settings.model_copy(update={"spool_dir": stores.settings.resolved_data_dir / "bench-spool"}),
    )
    collector_runner = web.AppRunner(
        create_collector(collector_stores, Metrics()), access_log=None, handle_signals=False
    )
    # As `journeys up` (cli/serve.py _tune_gc): freeze startup objects, collect young ones less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    try:
        await query_runner.setup()
        query_port = free_port()
        await web.TCPSite(query_runner, HOST, query_port).start()
        await collector_runner.setup()
        collector_port = free_port()
        await web.TCPSite(collector_runner, HOST, collector_port).start()
        yield Service(
            f"http://{HOST}:{collector_port}", f"http://{HOST}:{query_port}", project.write_key, project.read_key
        )
    finally:
        await collector_runner.cleanup()
        await query_runner.cleanup()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    for name in list(os.environ):  # the default embedded configuration, whatever the caller's shell says
        if name.startswith("JOURNEYS_") or name in ("CLICKHOUSE_URL", "DATABASE_URL"):
            del os.environ[name]
    from journeys.config import load_settings
    from journeys.stores import open_stores

    report: dict[str, Any] = {
        "rates": args.rates,
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "customers": args.customers,
        "connections": args.connections,
        "machine": {"cpus": os.cpu_count()},
        "date": date.today().isoformat(),
        "kpi_cache_ttl_s": None,
    }
    ctx = multiprocessing.get_context("spawn")
    overrides = {} if args.kpi_cache_ttl_s is None else {"kpi_cache_ttl_s": args.kpi_cache_ttl_s}
    settings = load_settings(data_dir=args.data_dir, **overrides)
    report["kpi_cache_ttl_s"] = settings.kpi_cache_ttl_s
    async with open_stores(settings) as stores:
        project, map_doc = await five_stage_project(stores, "bench-live")

        async with serving(stores, project) as svc:
            connector = aiohttp.TCPConnector(limit=64)
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
                began = time.perf_counter()
                while True:  # the first (empty) build: KPIs answer 503 until it is done
                    _, status, body = await timed_get(http, f"{svc.qurl}/v1/kpis", {"map": "five-stage"}, svc.read_key)
                    if status == 200:
                        break
                    if status != 503:
                        raise RuntimeError(f"/v1/kpis answered {status}: {body!r}")
                    if time.perf_counter() - began > 120:
                        raise RuntimeError("KPIs still answer 503 after 120 s")
                    await asyncio.sleep(0.2)
                log(
                    f"collector {svc.curl}, query service {svc.qurl}: up, KPIs answer "
                    f"({time.perf_counter() - began:.1f} s after start); data dir {args.data_dir}"
                )

                rows: list[dict[str, Any]] = []
                probe_index = 0
                for rate in args.rates:
                    began = time.perf_counter()  # start behind no backlog of the previous rate
                    while time.perf_counter() - began < args.settle_timeout:
                        value = await freshness_gauge(http, svc.qurl)
                        if value is not None and value < 1.0:
                            break
                        await asyncio.sleep(0.5)
                    settled = time.perf_counter() - began
                    if settled > 1:
                        log(f"waited {settled:.1f} s for the KPI freshness gauge to fall below 1 s")
                    row = await measure_rate(ctx, http, svc, rate, probe_index, args)
                    row["settle_wait_s"] = round(settled, 1)
                    probe_index += row["probes"]["sent"]
                    rows.append(row)
                    k, j = row["kpi_freshness_s"], row["journey_freshness_s"]
                    log(
                        f"{rate:,}/s: acked {row['acked_per_s']:,}/s ({row['acked_ratio']:.2f}); "
                        f"KPI freshness p50/p95 {k['p50'] or 'timeout'}/{k['p95'] or 'timeout'} s; "
                        f"journey freshness p50/p95 {j['p50'] or 'timeout'}/{j['p95'] or 'timeout'} s; "
                        f"/v1/kpis p50/p95 {row['kpi_call_ms']['p50']}/{row['kpi_call_ms']['p95']} ms; "
                        f"gauge end {row['freshness_gauge_s']['end']} s; service CPU {row['service_cpu_cores']} cores"
                    )
                    busy = row["updater_steps"]
                    log(
                        "  updater, share of the measured seconds by step (times per second): "
                        + ", ".join(f"{step} {v['busy']:.2f} ({v['per_s']:g}/s)" for step, v in busy.items())
                        + f"; total {sum(v['busy'] for v in busy.values()):.2f}; KPI answers reused "
                        + f"{row['kpi_answers_reused']}, computed {row['kpi_answers_computed']}"
                    )

    for row in rows:
        row["verdict"] = verdict_of(row)
    report["per_rate"] = rows
    measured = [r["offered_per_s"] for r in rows]
    checked = [r for r in args.target_rates if r in measured]
    report["targets"] = {
        "limits": TARGETS,
        "rates": checked or measured,
        "at_target_rates": bool(checked),  # False: no target rate was run (--quick): checked at every rate run
    }
    met_rates = [r["offered_per_s"] for r in rows if all(r["verdict"].values())]
    report["highest_rate_all_met"] = max(met_rates) if met_rates else None
    report["all_met"] = all(
        all(r["verdict"].values()) for r in rows if r["offered_per_s"] in report["targets"]["rates"]
    )
    return report


def render(r: dict[str, Any]) -> str:
    def s(value: float | None) -> str:
        return "timeout" if value is None else f"{value:.3f}"

    def ms(value: float | None) -> str:
        return "–" if value is None else f"{value:.1f}"

    lines = [
        (
            "| offered/s | acked/s (ratio) | KPI freshness p50 / p95 / max s | journey freshness p50 / p95 / max s "
            "| /v1/kpis p50 / p95 ms | probes missed (KPI, journey) of sent | freshness gauge end / max s |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["per_rate"]:
        k, j, c, p, g = (
            row["kpi_freshness_s"],
            row["journey_freshness_s"],
            row["kpi_call_ms"],
            row["probes"],
            row["freshness_gauge_s"],
        )
        lines.append(
            f"| {row['offered_per_s']:,} | {row['acked_per_s']:,} ({row['acked_ratio']:.2f}) "
            f"| {s(k['p50'])} / {s(k['p95'])} / {s(k['max'])} | {s(j['p50'])} / {s(j['p95'])} / {s(j['max'])} "
            f"| {ms(c['p50'])} / {ms(c['p95'])} | {p['kpi_missed']}, {p['journey_missed']} of {p['sent']} "
            f"| {g['end']} / {g['max']} |"
        )
    lines.append("")
    for row in r["per_rate"]:
        load = row["load"]
        extra = []
        if load["non_200"]:
            extra.append(f"non-200 {load['non_200']}")
        if load["exceptions"]:
            extra.append(f"exceptions {load['exceptions']}")
        if load["unsent_batches"]:
            extra.append(f"{load['unsent_batches']} batches unsent (no sender free for 1 s)")
        if row["probes"]["post_failed"]:
            extra.append(f"probe POSTs failed {row['probes']['post_failed']}")
        if row["kpi_call_ms"]["errors"]:
            extra.append(f"/v1/kpis errors {row['kpi_call_ms']['errors']}")
        lat = load["ack_latency_ms"]
        lines.append(
            f"{row['offered_per_s']:,}/s: batch ack p50/p99 {lat['p50']}/{lat['p99']} ms; "
            f"{row['kpi_call_ms']['calls']} KPI calls; CPU service {row['service_cpu_cores']} cores, "
            f"generator {load['generator_cpu_cores']} cores" + (f"; {'; '.join(extra)}" if extra else "")
        )
    lines.append("")
    t = r["targets"]
    where = (
        "at the target rates"
        if t["at_target_rates"]
        else "no target rate (10k, 20k) was run: checked at every rate run"
    )
    lines.append(f"targets ({where}):")
    names = {
        "acked_ratio": f"acked ≥ {TARGETS['acked_ratio']:.0%} of offered",
        "kpi_freshness_p95": f"KPI freshness p95 ≤ {TARGETS['kpi_freshness_p95_s']:g} s",
        "journey_freshness_p95": f"journey freshness p95 ≤ {TARGETS['journey_freshness_p95_s']:g} s",
        "kpi_p50": f"/v1/kpis p50 ≤ {TARGETS['kpi_p50_ms']:g} ms",
    }
    for row in r["per_rate"]:
        if row["offered_per_s"] not in t["rates"]:
            continue
        marks = "; ".join(f"{names[k]}: {'met' if ok else 'MISSED'}" for k, ok in row["verdict"].items())
        lines.append(f"  {row['offered_per_s']:,}/s offered: {marks}")
    best = r["highest_rate_all_met"]
    lines.append(
        f"highest offered rate with every target met: {f'{best:,}/s' if best else 'none'} (of {', '.join(f'{x:,}' for x in r['rates'])})"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def rates(text: str) -> list[int]:
        out = [int(x) for x in text.split(",") if x.strip()]
        if not out or any(x < BATCH for x in out):
            raise argparse.ArgumentTypeError(f"comma-separated events/s, each at least {BATCH}")
        return out

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", type=rates, default=[1000, 5000, 10000, 20000], help="offered events/s, comma-separated")
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds per rate")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring, per rate")
    p.add_argument("--quick", action="store_true", help="rates 1000,5000, 10 s each")
    p.add_argument("--customers", type=int, default=300_000)
    p.add_argument("--connections", type=int, default=32, help="the generator's concurrent requests")
    p.add_argument("--probe-every", type=float, default=2.0, help="seconds between freshness probes")
    p.add_argument("--probe-timeout", type=float, default=30.0, help="a probe not counted after this is missed (s)")
    p.add_argument(
        "--kpi-cache-ttl-s",
        type=float,
        default=None,
        help="JOURNEYS_KPI_CACHE_TTL_S for the service (default: the setting's default; 0: every KPI answer computed)",
    )
    p.add_argument(
        "--settle-timeout", type=float, default=60.0, help="longest wait for the previous rate's backlog (s)"
    )
    p.add_argument("--target-rates", type=rates, default=[10000, 20000], help="rates the targets are checked at")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--data-dir", type=Path, help="default: a temporary dir, removed afterwards")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    p.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.rates, args.seconds = [1000, 5000], 10.0
    if args.seconds < 1 or args.customers < 1 or args.connections < 1 or args.probe_every <= 0:
        p.error("--seconds ≥ 1, --customers ≥ 1, --connections ≥ 1, --probe-every > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_and_report(parse_args(argv), run, render, lambda r: bool(r["all_met"]), "journeys-bench-live-")


if __name__ == "__main__":
    sys.exit(main())
