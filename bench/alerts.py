#!/usr/bin/env python3
"""Alerts under load: the time from the collector's 200 for the events that push a stage below its target
(or back above its recovery threshold) to the alert webhook's arrival at a receiver on 127.0.0.1, with
ingest, the stage-state updater and KPI calls busy; against, in the same run, the KPI freshness of the same
events (their 200 → ``/v1/kpis`` counts them) and the same probes on an idle service.

What it does, on loopback only (127.0.0.1):

1. Opens the embedded stores (chDB + embedded PostgreSQL) in a fresh temporary data dir (or ``--data-dir``),
   creates a project with the five-stage template map and bench/query.py's four segments (what the load
   feeds, as bench/live.py), plus a small map ``alert-funnel`` whose first stage ``aware`` has a one-day
   conversion window and a target conversion rate of 0.5, on touchpoints no load event matches. It starts the
   query service (with its stage-state updater, alert evaluator and deliverer) and the collector **in this
   process** on one event loop, ``journeys up`` style (bench/live.py's setup, ``JOURNEYS_*`` unset: the
   defaults, rules also judged every 10 s), and a **webhook receiver in a separate process** (aiohttp; it
   stamps each request's arrival, ``time.monotonic()``, the same system-wide clock as this process's, and
   answers 200 at once). Then ``PUT /v1/alerts/rules/aware-rate`` with an admin key: conversion rate of
   ``aware``, all customers, the map's target (0.5; resolves at ≥ 0.525), ``--min-decided`` (20), notifying
   the receiver.
2. **Probes** (``--cycles`` per phase, each one fire then one resolve): one ``/v1/batch`` of at least
   ``--batch-customers`` (20) new customers who entered ``aware`` three days ago (decided: their window has
   closed), either all dropped, as many as push the stage's cumulative rate below 0.5, or all converted an
   hour later, as many as lift it to ≥ 0.525. From the batch's 200, two waits run side by side:
   (a) the receiver's ``alert.fired`` (``alert.resolved``) webhook whose numbers are the ones just reached
   (converted and dropped as the bench counts them; any other webhook is counted as unexpected), and
   (b) the baseline, ``GET /v1/kpis?map=alert-funnel`` back to back (20 ms apart) until ``aware`` shows those
   numbers: the facts' freshness, which every alert waits for. A transition not seen within ``--timeout``
   (30 s) is *missed* and enters the percentiles as infinite. Between transitions a random 0.5–1.5 s pause,
   so the probes do not keep one phase of the updater's polls or the evaluator's 10 s round. Where the time
   goes, per transition, from the service's own clocks: the evaluation's start (the webhook body's ``at``),
   its notification queued (``alert_deliveries.created_at``: the recording transaction's start, after the
   judging), then the arrival.
3. **Phases**: *idle* (nothing but the probes), then *loaded*: a load generator in a separate process
   (bench/live.py's, unchanged: batches of 100 realistic five-stage events over ``--customers`` (300 000)
   customers, paced at ``--rate`` (2000) events/s by the wall clock, ``--connections`` (32) in flight), a
   ``GET /v1/kpis?map=five-stage`` every ``--kpi-every`` (0.5) s, and the KPI freshness gauge every second;
   ``--warmup`` (5) s of load before the first probe. ``--only idle|loaded`` runs one phase. ``--control``
   follows each cycle with the same cycle with the rule disabled (``enabled: false``; KPI freshness only):
   what judging the rule costs the facts' own freshness, interleaved so both see the same load and data.
4. Prints a table: per phase, event 200 → webhook p50 / p95 / max for fired and for resolved, the KPI
   freshness of the same probes, webhook / KPI freshness (p50s, p95s: what alerting adds on top of the
   facts' freshness), the loaded / idle ratios; where the time goes; the load delivered (acked events/s,
   /v1/kpis latency, CPU cores of this process, of the rest of the bench (PostgreSQL, generator, receiver)
   and of every other process on the machine: a noisy neighbour shows); and whether the target held: every
   ``alert.fired`` within ``--target`` (10) s of its event's 200, in every phase run. ``--json FILE`` writes
   the figures.

Notes. The stage's rate is cumulative, so each batch must move it across 0.5 and 0.525 again: batches grow
from 20 to ~60 customers over 20 cycles (``customers`` per row in the JSON). The probe ids (``ap-…``) sort
before the load's (``c-…``): when a poll's changed ids span several of the updater's 20 000-id statements,
the probes' facts are in the first, so /v1/kpis counts them before the poll ends, while the evaluator is
woken at its end; the webhook − KPI freshness column shows that gap (bench/README.md).

    . .venv/bin/activate && python bench/alerts.py --quick    # 3 cycles per phase, ~35 s
    python bench/alerts.py                                     # 10 cycles per phase at 2000 events/s, ~1.5–2 min
    python bench/alerts.py --rate 5000 --only loaded --control

Exit status: 0 the target held, 1 it did not, 2 the benchmark could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import hmac
import math
import multiprocessing
import os
import random
import subprocess
import sys
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

# Run as a script, this file's directory comes first on sys.path and its siblings' names (query.py) would
# shadow the packages it measures: import the siblings, then take the directory off again.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]
from benchlib import HOST, basic, five_stage_project, free_port, log, pct, run_and_report  # noqa: E402
import live  # noqa: E402 - its load generator, Service and helpers, as they are

if str(_HERE) in sys.path:
    sys.path.remove(str(_HERE))

MAP_NAME = "alert-funnel"
RULE_NAME = "aware-rate"
GOAL = Fraction(1, 2)  # the stage's target conversion rate (the rule's threshold)
ALERT_MAP = {
    "name": MAP_NAME,
    "description": "bench/alerts.py: only the alert probes enter it",
    "stages": [
        {"id": "aware", "name": "Aware", "conversion_window_days": 1, "target": {"conversion_rate": float(GOAL)}},
        {"id": "consider", "name": "Consider", "conversion_window_days": 1},
        {"id": "buy", "name": "Buy"},
    ],
    "touchpoints": [
        {"id": "probe-entered", "stage": "aware", "match": {"event": "Alert Probe Entered"}},
        {"id": "probe-moved", "stage": "consider", "match": {"event": "Alert Probe Moved"}},
        {"id": "probe-bought", "stage": "buy", "match": {"event": "Alert Probe Bought"}},
    ],
}


def iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


_TICK = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine, summed over cores (as bench/ingest.py)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / _TICK  # all but idle and iowait


def ours_cpu_s(data_dir: Path) -> float:
    """User + system CPU seconds of this process and every process below it (the load generator, the
    receiver), and of the embedded PostgreSQL (its server detaches: found by the data dir on its command
    line) with its backends."""
    cpu: dict[int, float] = {}
    parent: dict[int, int] = {}
    roots = {os.getpid()}
    marker = str(data_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if marker in (entry / "cmdline").read_bytes():
                roots.add(int(entry.name))
        except OSError:
            continue
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / _TICK
    total = 0.0
    for pid, seconds in cpu.items():
        at = pid
        while at > 1 and at not in roots:
            at = parent.get(at, 0)
        if at in roots:
            total += seconds
    return total


@dataclasses.dataclass
class CpuMark:
    wall: float
    service: float  # this process: the service, its chDB threads, the probes
    tree: float  # this process, its children, the embedded PostgreSQL
    machine: float

    @classmethod
    def take(cls, data_dir: Path) -> "CpuMark":
        return cls(time.monotonic(), time.process_time(), ours_cpu_s(data_dir), machine_busy_s())

    def until(self, end: "CpuMark") -> dict[str, float]:
        """Cores used meanwhile: by this process, by the rest of the bench (PostgreSQL, the generator, the
        receiver), by every other process of the machine."""
        wall = max(end.wall - self.wall, 1e-9)
        service, tree = end.service - self.service, end.tree - self.tree
        return {
            "service_cores": round(service / wall, 2),
            "rest_cores": round(max(0.0, tree - service) / wall, 2),
            "others_cores": round(max(0.0, (end.machine - self.machine) - tree) / wall, 2),
        }


def stats(values: list[float], digits: int = 3) -> dict[str, Any]:
    return {
        "p50": live.finite(pct(values, 50), digits),
        "p95": live.finite(pct(values, 95), digits),
        "max": live.finite(max(values) if values else None, digits),
        "n": len(values),
    }


# --------------------------------------------------------------------------------------------------------
# The webhook receiver (a separate process)
# --------------------------------------------------------------------------------------------------------


def receiver_process(arrivals: Any, control: Any, port: int) -> None:
    """Entry point of the receiver (spawned): reports ``ready``, then one message per request received
    (arrival times first, taken before the body is read), until told to stop or its parent is gone."""
    try:
        asyncio.run(_receive(arrivals, control, port))
    except BaseException as exc:  # noqa: BLE001 - the parent must hear why
        try:
            arrivals.send({"error": repr(exc)})
        except (BrokenPipeError, OSError):
            pass


async def _receive(arrivals: Any, control: Any, port: int) -> None:
    parent = os.getppid()

    async def hook(request: web.Request) -> web.Response:
        mono, wall = time.monotonic(), time.time()
        body = await request.read()
        arrivals.send(
            {
                "mono": mono,
                "wall": wall,
                "signature": request.headers.get("X-Journeys-Signature", ""),
                "body": body,
            }
        )
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hooks/{token}", hook)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    arrivals.send({"ready": True})
    try:
        while os.getppid() == parent:
            if await asyncio.to_thread(control.poll, 0.5):
                break
    finally:
        await runner.cleanup()


class Webhooks:
    """This process's end of the receiver: arrivals queued as they come (read by the event loop when the
    pipe is readable), and ``wait`` for the next one of a kind with the expected numbers."""

    def __init__(self, conn: Any):
        self.conn = conn
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.unexpected: list[dict[str, Any]] = []
        self.closed = False
        asyncio.get_running_loop().add_reader(conn.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            while self.conn.poll(0):
                message = self.conn.recv()
                self.queue.put_nowait(message)
        except (EOFError, OSError):
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().remove_reader(self.conn.fileno())

    async def wait(self, kind: str, converted: int, dropped: int, deadline: float) -> dict[str, Any] | None:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                message = await asyncio.wait_for(self.queue.get(), remaining)
            except asyncio.TimeoutError:
                return None
            if "error" in message:
                raise RuntimeError(f"webhook receiver: {message['error']}")
            try:
                body = orjson.loads(message["body"])
            except orjson.JSONDecodeError:
                body = {}
            evaluation = body.get("evaluation") or {}
            if (
                body.get("type") == f"alert.{kind}"
                and evaluation.get("converted") == converted
                and evaluation.get("dropped") == dropped
            ):
                return {**message, "parsed": body}
            self.unexpected.append(
                {
                    "type": body.get("type"),
                    "converted": evaluation.get("converted"),
                    "dropped": evaluation.get("dropped"),
                    "waiting_for": [kind, converted, dropped],
                }
            )


def signature_ok(secret: str, header: str, body: bytes) -> bool:
    """The receiver's check (query/alert_delivery.py), done after the timing: HMAC-SHA256 of ``"<t>." + body``
    with the project's signing secret."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, fields["v1"])
    except (KeyError, ValueError):
        return False


# --------------------------------------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
    svc: live.Service
    admin_key: str
    stores: Any
    hooks: Webhooks
    rule: dict[str, Any]


@dataclasses.dataclass
class Ledger:
    """The alert map's ``aware`` stage as the bench has fed it: every probe customer decided."""

    recover_at: Fraction  # the rule's recovery threshold, as the service computes it
    converted: int = 0
    dropped: int = 0
    customers: int = 0

    def to_fire(self, at_least: int, min_decided: int) -> int:
        """Dropped customers to add so the rate falls below the goal, C / (C + D + d) < 1/2, with at least
        ``min_decided`` decided."""
        return max(at_least, self.converted - self.dropped + 1, min_decided - self.converted - self.dropped)

    def to_resolve(self, at_least: int) -> int:
        """Converted customers to add so the rate reaches the recovery threshold: (C + c) / (C + c + D) ≥ r."""
        r = self.recover_at
        needed = math.ceil(r * self.dropped / (1 - r)) - self.converted  # C + c ≥ r D / (1 - r)
        return max(at_least, needed)


def probe_events(tag: str, customers: int, converted: bool) -> list[dict[str, Any]]:
    """``customers`` new customers who entered ``aware`` three days ago (one-day window: decided), each
    moved on an hour later when ``converted``."""
    entered = datetime.now(timezone.utc) - timedelta(days=3)
    events = []
    for i in range(customers):
        user = f"{tag}-{i}"
        events.append(
            {
                "type": "track",
                "event": "Alert Probe Entered",
                "channel": "web",
                "userId": user,
                "messageId": f"{user}-in",
                "timestamp": iso(entered),
            }
        )
        if converted:
            events.append(
                {
                    "type": "track",
                    "event": "Alert Probe Moved",
                    "channel": "web",
                    "userId": user,
                    "messageId": f"{user}-on",
                    "timestamp": iso(entered + timedelta(hours=1)),
                }
            )
    return events


async def kpis_show(http: aiohttp.ClientSession, svc: live.Service, converted: int, dropped: int) -> bool:
    _, status, body = await live.timed_get(http, f"{svc.qurl}/v1/kpis", {"map": MAP_NAME}, svc.read_key)
    if status != 200:
        return False
    aware = body["segments"][0]["stages"][0]
    return aware["converted"] == converted and aware["dropped"] == dropped


async def transition(
    http: aiohttp.ClientSession,
    setup: Setup,
    ledger: Ledger,
    kind: str,
    tag: str,
    args: argparse.Namespace,
    judged: bool = True,
) -> dict[str, Any]:
    """One probe batch that should make the rule fire (or resolve): its timings. With the rule disabled
    (``judged`` false), the KPI freshness only."""
    svc = setup.svc
    if kind == "fired":
        n = ledger.to_fire(args.batch_customers, args.min_decided)
        events = probe_events(tag, n, converted=False)
        expect_c, expect_d = ledger.converted, ledger.dropped + n
    else:
        n = ledger.to_resolve(args.batch_customers)
        events = probe_events(tag, n, converted=True)
        expect_c, expect_d = ledger.converted + n, ledger.dropped
    body = orjson.dumps({"batch": events})
    headers = {**basic(svc.write_key), "Content-Type": "application/json"}
    sent = time.monotonic()
    async with http.post(f"{svc.curl}/v1/batch", data=body, headers=headers) as r:
        answer = await r.read()
        status = r.status
    acked, acked_wall = time.monotonic(), time.time()
    if status != 200:
        raise RuntimeError(f"the probe batch was answered {status}: {answer[:300]!r}")
    ledger.converted, ledger.dropped, ledger.customers = expect_c, expect_d, ledger.customers + n
    deadline = acked + args.timeout

    async def kpi_wait() -> float:
        while time.monotonic() < deadline:
            try:
                if await kpis_show(http, svc, expect_c, expect_d):
                    return time.monotonic() - acked
            except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, IndexError):
                pass
            await asyncio.sleep(0.02)
        return float("inf")

    kpi_task = asyncio.create_task(kpi_wait())
    hook = None
    try:
        if judged:
            hook = await setup.hooks.wait(kind, expect_c, expect_d, deadline)
    finally:
        kpi_s = await kpi_task
    row: dict[str, Any] = {
        "kind": kind,
        "rule": "enabled" if judged else "disabled",
        "customers": n,
        "events": len(events),
        "converted": expect_c,
        "dropped": expect_d,
        "ack_s": round(acked - sent, 4),
        "kpi_s": kpi_s,
    }
    if judged:
        row["webhook_s"] = float("inf") if hook is None else hook["mono"] - acked
    if hook is not None:
        parsed = hook["parsed"]
        evaluated = parse_iso(parsed["at"]).timestamp()
        queued_at = await setup.stores.pg.fetchval(
            "SELECT created_at FROM alert_deliveries WHERE id = $1", uuid.UUID(parsed["id"])
        )
        row.update(
            to_evaluation_s=evaluated - acked_wall,  # the evaluation that saw it began
            judging_s=queued_at.timestamp() - evaluated,  # its judging, until the recording transaction began
            queued_to_arrival_s=hook["wall"] - queued_at.timestamp(),  # commit, wake, claim, POST
            sequence=parsed["sequence"],
            signature=hook["signature"],
            raw=hook["body"],
        )
    return row


def rule_limits(rule: dict[str, Any]) -> tuple[Fraction, Fraction]:
    """(threshold, recovery threshold) of the rule on the alert map, by the service's own rules."""
    from query.alert_rules import thresholds, validate_alert_rule
    from query.maps import validate_map

    limits = thresholds(validate_alert_rule(rule), validate_map(ALERT_MAP))
    if limits is None:
        raise RuntimeError("the rule has no threshold")
    return limits


def git_commit() -> str | None:
    """The commit measured (``+`` when the working tree differs from it)."""
    root = _HERE.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True)
    except OSError:
        return None
    return (head.stdout.strip() + ("+" if dirty.stdout.strip() else "")) or None


async def put_rule(http: aiohttp.ClientSession, setup: Setup, enabled: bool) -> None:
    url = f"{setup.svc.qurl}/v1/alerts/rules/{RULE_NAME}"
    async with http.put(url, json={**setup.rule, "enabled": enabled}, headers=basic(setup.admin_key)) as r:
        if r.status not in (200, 201):
            raise RuntimeError(f"PUT the rule: {r.status} {await r.text()}")


async def run_cycles(
    http: aiohttp.ClientSession, setup: Setup, ledger: Ledger, phase: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """``--cycles`` fire + resolve cycles; with ``--control``, each followed by the same cycle with the rule
    disabled (the KPI freshness when no rule is judged, interleaved so that both see the same load and data)."""
    rng = random.Random(f"{args.seed}-{phase}")
    rows = []
    for cycle in range(args.cycles):
        for judged in (True, False) if args.control else (True,):
            if args.control:
                await put_rule(http, setup, enabled=judged)
            for kind in ("fired", "resolved"):
                await asyncio.sleep(rng.uniform(0.5, 1.5))
                tag = f"ap-{phase}-{cycle}-{kind}-{'on' if judged else 'off'}"
                row = await transition(http, setup, ledger, kind, tag, args, judged)
                row["cycle"] = cycle
                rows.append(row)
                if not judged:
                    shown = "rule disabled"
                elif row["webhook_s"] == float("inf"):
                    shown = "webhook MISSED"
                else:
                    shown = f"webhook {row['webhook_s']:.3f} s"
                kpi = "MISSED" if row["kpi_s"] == float("inf") else f"{row['kpi_s']:.3f} s"
                log(
                    f"{phase} cycle {cycle + 1}/{args.cycles} {kind}: {row['customers']} customers "
                    f"({row['converted']} converted, {row['dropped']} dropped), {shown}, KPIs {kpi}"
                )
    if args.control:
        await put_rule(http, setup, enabled=True)
    return rows


def summarize(all_rows: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [r for r in all_rows if r["rule"] == "enabled"]
    control = [r["kpi_s"] for r in all_rows if r["rule"] == "disabled"]

    def of(kind: str | None, key: str) -> list[float]:
        return [r[key] for r in rows if (kind is None or r["kind"] == kind) and key in r]

    pairs = [(r["webhook_s"], r["kpi_s"]) for r in rows if math.isfinite(r["webhook_s"]) and math.isfinite(r["kpi_s"])]
    return {
        "fired_s": {
            **stats(of("fired", "webhook_s")),
            "missed": sum(1 for v in of("fired", "webhook_s") if v == float("inf")),
        },
        "resolved_s": {
            **stats(of("resolved", "webhook_s")),
            "missed": sum(1 for v in of("resolved", "webhook_s") if v == float("inf")),
        },
        "webhook_s": stats(of(None, "webhook_s")),
        "kpi_freshness_s": {
            **stats(of(None, "kpi_s")),
            "missed": sum(1 for v in of(None, "kpi_s") if v == float("inf")),
        },
        "webhook_minus_kpi_s": stats([w - k for w, k in pairs]),
        "kpi_freshness_rule_disabled_s": {
            **stats(control),
            "missed": sum(1 for v in control if v == float("inf")),
        },
        "breakdown_s": {
            "ack_to_evaluation": stats(of(None, "to_evaluation_s")),
            "judging": stats(of(None, "judging_s")),
            "queued_to_arrival": stats(of(None, "queued_to_arrival_s")),
        },
        "probe_ack_ms": stats([r["ack_s"] * 1000 for r in rows], 1),
        "customers_per_batch": stats([float(r["customers"]) for r in rows], 0),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 2)


# --------------------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------------------


async def idle_phase(
    http: aiohttp.ClientSession, setup: Setup, ledger: Ledger, args: argparse.Namespace
) -> dict[str, Any]:
    log(f"idle: {args.cycles} cycles, nothing but the probes")
    mark = CpuMark.take(args.data_dir)
    rows = await run_cycles(http, setup, ledger, "idle", args)
    end = CpuMark.take(args.data_dir)
    return {"phase": "idle", "rows": rows, "seconds": round(end.wall - mark.wall, 1), "cpu": mark.until(end)}


async def loaded_phase(
    ctx: Any, http: aiohttp.ClientSession, setup: Setup, ledger: Ledger, args: argparse.Namespace
) -> dict[str, Any]:
    svc = setup.svc
    parent_conn, child_conn = ctx.Pipe()
    cap_s = (
        args.warmup + args.cycles * (4 if args.control else 2) * (args.timeout + 2) + 60
    )  # the generator's own hard stop beyond it
    cfg = {
        "rate": args.rate,
        "url": f"{svc.curl}/v1/batch",
        "write_key": svc.write_key,
        "customers": args.customers,
        "seed": args.seed,
        "tag": f"al{os.getpid()}-{time.time_ns() % 10**9}",
        "connections": args.connections,
        "request_timeout_s": 30.0,
        "max_tail_s": 30.0,
    }
    proc = ctx.Process(target=live.load_process, args=(child_conn, cfg), name="alerts-load", daemon=True)
    proc.start()
    child_conn.close()
    done = asyncio.Event()
    kpi_ms: list[float] = []
    kpi_errors: dict[str, int] = {}
    gauge: list[float] = []
    try:
        if not await asyncio.to_thread(parent_conn.poll, 60):
            raise RuntimeError("the load generator did not start within 60 s")
        hello = parent_conn.recv()
        if "error" in hello:
            raise RuntimeError(f"load generator: {hello['error']}")
        start = time.monotonic() + 0.1
        measure_from = start + args.warmup
        parent_conn.send({"start": start, "measure_from": measure_from, "measure_to": measure_from + cap_s})
        log(f"loaded: {args.rate:,} events/s offered, KPI calls every {args.kpi_every:g} s; {args.warmup:g} s warm-up")

        async def kpi_loop() -> None:
            at = start
            while not done.is_set():
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                try:
                    took, status, _ = await live.timed_get(
                        http, f"{svc.qurl}/v1/kpis", {"map": "five-stage"}, svc.read_key
                    )
                except Exception as exc:  # noqa: BLE001 - counted, the loop goes on
                    kpi_errors[type(exc).__name__] = kpi_errors.get(type(exc).__name__, 0) + 1
                else:
                    if status == 200:
                        if time.monotonic() >= measure_from:
                            kpi_ms.append(took * 1000)
                    else:
                        kpi_errors[str(status)] = kpi_errors.get(str(status), 0) + 1
                at = max(at + args.kpi_every, time.monotonic())

        async def gauge_loop() -> None:
            while not done.is_set():
                await asyncio.sleep(1.0)
                value = await live.freshness_gauge(http, svc.qurl)
                if value is not None and time.monotonic() >= measure_from:
                    gauge.append(value)

        background = [asyncio.create_task(kpi_loop()), asyncio.create_task(gauge_loop())]
        await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
        mark = CpuMark.take(args.data_dir)
        try:
            rows = await run_cycles(http, setup, ledger, "loaded", args)
        finally:
            done.set()
            await asyncio.gather(*background, return_exceptions=True)
        end = CpuMark.take(args.data_dir)
        measured_s = int(time.monotonic() - measure_from)
        parent_conn.send({"stop": True})
        if not await asyncio.to_thread(parent_conn.poll, 30):
            raise RuntimeError("the load generator sent no counts within 30 s of stop")
        load = parent_conn.recv()
        if "error" in load:
            raise RuntimeError(f"load generator: {load['error']}")
    finally:
        done.set()
        await asyncio.to_thread(proc.join, 10)
        if proc.is_alive():
            proc.terminate()
            await asyncio.to_thread(proc.join, 5)
        parent_conn.close()

    per_second = load["acked_per_second"][:measured_s]
    w = load["window"]
    return {
        "phase": "loaded",
        "rows": rows,
        "seconds": round(end.wall - mark.wall, 1),
        "cpu": mark.until(end),
        "load": {
            "offered_per_s": args.rate,
            "acked_per_s": round(sum(per_second) / len(per_second)) if per_second else 0,
            "non_200": w["statuses"],
            "exceptions": w["exceptions"],
            "unsent_batches": w["unsent"],
            "ack_latency_ms": load["ack_latency_ms"],
            "generator_cpu_cores": round(load["cpu_s"] / load["ran_s"], 2) if load["ran_s"] else None,
        },
        "kpi_call_ms": {**stats(kpi_ms, 1), "errors": kpi_errors},
        "freshness_gauge_s": {
            "p50": live.finite(pct(gauge, 50), 2),
            "max": live.finite(max(gauge) if gauge else None, 2),
        },
    }


# --------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    for name in list(os.environ):  # the default embedded configuration, whatever the caller's shell says
        if name.startswith("JOURNEYS_") or name in ("CLICKHOUSE_URL", "DATABASE_URL"):
            del os.environ[name]

    from query import definitions
    from journeys.config import load_settings
    from journeys.keys import add_key
    from journeys.stores import open_stores

    report: dict[str, Any] = {
        "rate": args.rate,
        "cycles": args.cycles,
        "phases": args.phases,
        "customers": args.customers,
        "min_decided": args.min_decided,
        "batch_customers": args.batch_customers,
        "target_s": args.target,
        "commit": git_commit(),
        "machine": {"cpus": os.cpu_count()},
        "date": date.today().isoformat(),
    }
    ctx = multiprocessing.get_context("spawn")
    settings = load_settings(data_dir=args.data_dir)
    receiver_port = free_port()
    arrivals_r, arrivals_w = ctx.Pipe(duplex=False)
    control_r, control_w = ctx.Pipe(duplex=False)
    receiver = ctx.Process(
        target=receiver_process, args=(arrivals_w, control_r, receiver_port), name="alerts-receiver", daemon=True
    )
    receiver.start()
    arrivals_w.close()
    control_r.close()
    phases: list[dict[str, Any]] = []
    hooks: Webhooks | None = None
    secret = ""
    try:
        if not await asyncio.to_thread(arrivals_r.poll, 60):
            raise RuntimeError("the webhook receiver did not start within 60 s")
        hello = arrivals_r.recv()
        if "error" in hello:
            raise RuntimeError(f"webhook receiver: {hello['error']}")
        hooks = Webhooks(arrivals_r)
        async with open_stores(settings) as stores:
            project, _ = await five_stage_project(stores, "bench-alerts")
            async with stores.pg.acquire() as conn:
                await definitions.apply(conn, project.id, "map", ALERT_MAP)
                admin_key = await add_key(conn, project.id, "admin")
            async with live.serving(stores, project) as svc:
                receiver_url = f"http://{HOST}:{receiver_port}/hooks/bench"
                rule = {
                    "name": RULE_NAME,
                    "map": MAP_NAME,
                    "stage": "aware",
                    "metric": "conversion_rate",
                    "min_decided": args.min_decided,
                    "notify": [{"url": receiver_url}],
                }
                setup = Setup(svc, admin_key, stores, hooks, rule)
                connector = aiohttp.TCPConnector(limit=64)
                timeout = aiohttp.ClientTimeout(total=60)
                async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                    began = time.perf_counter()
                    for map_name in ("five-stage", MAP_NAME):  # the first build: KPIs answer 503 until it is done
                        while True:
                            _, status, body = await live.timed_get(
                                http, f"{svc.qurl}/v1/kpis", {"map": map_name}, svc.read_key
                            )
                            if status == 200:
                                break
                            if status != 503:
                                raise RuntimeError(f"/v1/kpis answered {status}: {body!r}")
                            if time.perf_counter() - began > 120:
                                raise RuntimeError("KPIs still answer 503 after 120 s")
                            await asyncio.sleep(0.2)
                    await put_rule(http, setup, enabled=True)
                    async with http.get(f"{svc.qurl}/v1/alerts/signing-secret", headers=basic(admin_key)) as r:
                        secret = (await r.json())["secret"]
                    log(
                        f"collector {svc.curl}, query service {svc.qurl}, receiver {receiver_url}: up, KPIs answer "
                        f"({time.perf_counter() - began:.1f} s after start); rule {RULE_NAME} applied"
                    )
                    goal, recover_at = rule_limits(rule)
                    if goal != GOAL:
                        raise RuntimeError(f"the rule's threshold is {goal}, not the map's target {GOAL}")
                    ledger = Ledger(recover_at)
                    report["recover_at"] = float(recover_at)
                    if "idle" in args.phases:
                        phases.append(await idle_phase(http, setup, ledger, args))
                    if "loaded" in args.phases:
                        phases.append(await loaded_phase(ctx, http, setup, ledger, args))
    finally:
        control_w.send("stop")
        await asyncio.to_thread(receiver.join, 10)
        if receiver.is_alive():
            receiver.terminate()
            await asyncio.to_thread(receiver.join, 5)
        if hooks is not None:
            hooks.close()
        arrivals_r.close()
        control_w.close()

    bad_signatures = 0
    for phase in phases:
        for row in phase["rows"]:
            if "raw" in row:
                bad_signatures += not signature_ok(secret, row.pop("signature"), row.pop("raw"))
        phase["summary"] = summarize(phase["rows"])
        for row in phase["rows"]:
            for key, value in list(row.items()):
                if isinstance(value, float):
                    row[key] = live.finite(value, 4)
    report["per_phase"] = phases
    report["unexpected_webhooks"] = hooks.unexpected if hooks is not None else []
    report["bad_signatures"] = bad_signatures
    by = {p["phase"]: p["summary"] for p in phases}
    if "idle" in by and "loaded" in by:
        report["loaded_over_idle"] = {
            what: {q: ratio(by["loaded"][what][q], by["idle"][what][q]) for q in ("p50", "p95")}
            for what in ("fired_s", "resolved_s", "kpi_freshness_s")
        }
    fired_max = [p["summary"]["fired_s"]["max"] for p in phases]
    report["target_held"] = bool(phases) and all(m is not None and m <= args.target for m in fired_max)
    return report


def render(r: dict[str, Any]) -> str:
    def s(value: float | None) -> str:
        return "missed" if value is None else f"{value:.2f}"

    def trio(d: dict[str, Any]) -> str:
        return f"{s(d['p50'])} / {s(d['p95'])} / {s(d['max'])}"

    def x(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}×"

    names = {"idle": "idle (probes only)", "loaded": f"loaded ({r['rate']:,} events/s offered + KPI calls)"}
    lines = [
        "Event 200 → alert webhook at the receiver, seconds (p50 / p95 / max); baseline: the same events' KPI "
        f"freshness (200 → /v1/kpis counts them). Commit {r['commit'] or 'unknown'}, {r['date']}, "
        f"{r['machine']['cpus']} CPUs; rule threshold 0.5, recovers at {r.get('recover_at', '?')}",
        "",
        "| phase | fired | resolved | KPI freshness (baseline) | webhook / KPI freshness, p50 · p95 "
        "| webhook − KPI freshness p50 / p95 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p in r["per_phase"]:
        m = p["summary"]
        w, k, d = m["webhook_s"], m["kpi_freshness_s"], m["webhook_minus_kpi_s"]
        lines.append(
            f"| {names[p['phase']]} | {trio(m['fired_s'])} | {trio(m['resolved_s'])} | {trio(k)} "
            f"| {x(ratio(w['p50'], k['p50']))} · {x(ratio(w['p95'], k['p95']))} | {s(d['p50'])} / {s(d['p95'])} |"
        )
    if "loaded_over_idle" in r:
        lo = r["loaded_over_idle"]
        lines.append(
            "| loaded / idle, p50 · p95 | "
            + " | ".join(f"{x(lo[w]['p50'])} · {x(lo[w]['p95'])}" for w in ("fired_s", "resolved_s", "kpi_freshness_s"))
            + " | | |"
        )
    lines.append("")
    for p in r["per_phase"]:
        m = p["summary"]
        b = m["breakdown_s"]
        lines.append(
            f"{p['phase']}: where the time goes, p50 / p95 s (service clocks): 200 → the evaluation that saw it began "
            f"{s(b['ack_to_evaluation']['p50'])} / {s(b['ack_to_evaluation']['p95'])}; judging "
            f"{s(b['judging']['p50'])} / {s(b['judging']['p95'])}; queued → arrival "
            f"{s(b['queued_to_arrival']['p50'])} / {s(b['queued_to_arrival']['p95'])}"
        )
        extra = [
            f"{m['fired_s']['n']} fired, {m['resolved_s']['n']} resolved",
            f"{m['customers_per_batch']['p50']:.0f} customers per probe batch (p50)",
            f"probe ack p50 {m['probe_ack_ms']['p50']} ms",
            f"CPU cores: service {p['cpu']['service_cores']}, PostgreSQL + generator + receiver "
            f"{p['cpu']['rest_cores']}, other processes {p['cpu']['others_cores']}",
            f"{p['seconds']} s",
        ]
        if "load" in p:
            load, c = p["load"], p["kpi_call_ms"]
            extra += [
                f"ingest acked {load['acked_per_s']:,}/s of {load['offered_per_s']:,} offered",
                f"batch ack p50/p99 {load['ack_latency_ms']['p50']}/{load['ack_latency_ms']['p99']} ms",
                f"/v1/kpis five-stage p50/p95 {c['p50']}/{c['p95']} ms ({c['n']} calls)",
                f"KPI freshness gauge p50/max {p['freshness_gauge_s']['p50']}/{p['freshness_gauge_s']['max']} s",
                f"generator alone {load['generator_cpu_cores']} cores",
            ]
            for what in ("non_200", "exceptions"):
                if load[what]:
                    extra.append(f"{what} {load[what]}")
            if load["unsent_batches"]:
                extra.append(f"{load['unsent_batches']} batches unsent")
            if c["errors"]:
                extra.append(f"/v1/kpis errors {c['errors']}")
        lines.append(f"  {'; '.join(extra)}")
    for p in r["per_phase"]:
        c = p["summary"]["kpi_freshness_rule_disabled_s"]
        if c["n"]:
            k = p["summary"]["kpi_freshness_s"]
            lines.append(
                f"{p['phase']}: KPI freshness with the rule disabled (no rule judged; interleaved cycles) "
                f"{trio(c)} s; with it judged / disabled, p50 · p95: {x(ratio(k['p50'], c['p50']))} · "
                f"{x(ratio(k['p95'], c['p95']))}"
            )
    if r["unexpected_webhooks"]:
        lines.append(f"unexpected webhooks: {len(r['unexpected_webhooks'])} {r['unexpected_webhooks'][:3]}")
    if r["bad_signatures"]:
        lines.append(f"webhooks whose signature did not verify: {r['bad_signatures']}")
    lines.append("")
    worst = [p["summary"]["fired_s"]["max"] for p in r["per_phase"]]
    shown = ", ".join(f"{p['phase']} {s(m)} s" for p, m in zip(r["per_phase"], worst))
    lines.append(
        f"target: every alert.fired within {r['target_s']:g} s of its event's 200: "
        f"{'HELD' if r['target_held'] else 'MISSED'} (slowest: {shown})"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=int, default=2000, help="offered background events/s in the loaded phase")
    p.add_argument("--cycles", type=int, default=10, help="fire + resolve cycles per phase")
    p.add_argument("--quick", action="store_true", help="3 cycles per phase, 3 s warm-up")
    p.add_argument("--only", choices=("idle", "loaded"), help="run one phase")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the first loaded probe")
    p.add_argument("--customers", type=int, default=300_000, help="the background load's customers")
    p.add_argument("--connections", type=int, default=32, help="the load generator's concurrent requests")
    p.add_argument("--kpi-every", type=float, default=0.5, help="seconds between background /v1/kpis calls")
    p.add_argument("--min-decided", type=int, default=20, help="the rule's min_decided")
    p.add_argument("--batch-customers", type=int, default=20, help="at least this many customers per probe batch")
    p.add_argument("--timeout", type=float, default=30.0, help="a transition not seen after this is missed (s)")
    p.add_argument("--target", type=float, default=10.0, help="every alert.fired within this (s)")
    p.add_argument(
        "--control",
        action="store_true",
        help="after each cycle, the same cycle with the rule disabled: KPI freshness when no rule is judged",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--data-dir", type=Path, help="default: a temporary dir, removed afterwards")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    p.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.cycles, args.warmup = 3, 3.0
    if args.rate < live.BATCH or args.cycles < 1 or args.customers < 1 or args.connections < 1:
        p.error(f"--rate ≥ {live.BATCH}, --cycles ≥ 1, --customers ≥ 1, --connections ≥ 1")
    if args.batch_customers < 1 or args.min_decided < 1 or args.timeout <= 0 or args.kpi_every <= 0:
        p.error("--batch-customers ≥ 1, --min-decided ≥ 1, --timeout > 0, --kpi-every > 0")
    args.phases = [args.only] if args.only else ["idle", "loaded"]
    return args


def main(argv: list[str] | None = None) -> int:
    return run_and_report(parse_args(argv), run, render, lambda r: bool(r["target_held"]), "journeys-bench-alerts-")


if __name__ == "__main__":
    sys.exit(main())
