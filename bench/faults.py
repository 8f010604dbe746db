#!/usr/bin/env python3
"""Fault bench: real processes on 127.0.0.1, one fault per scenario, one table of what was lost.

Every scenario runs ``journeys up`` (testkit/service.py) with ``CLICKHOUSE_URL`` pointing at a ClickHouse
HTTP server over chDB (testkit/chhttp.py) that this bench can stop, slow down and query directly. A load
generator sends Segment batches with unique ``messageId``s and records what was acknowledged (200), refused
(503/429, with or without ``Retry-After``) or left unanswered. Then:

* **stored** = distinct messageIds of the scenario's project in ClickHouse (queried directly);
* **lost** = acknowledged ids not stored (must be 0);
* **duplicated** = rows the query service returns (``/v1/customers/{id}/events``, the reads' ``LIMIT 1 BY
  message_id`` dedup) beyond one per id (must be 0); the *physical* duplicate rows before any merge (a
  retry or a replay stores a batch twice) are reported in the notes as information.

Scenarios:

a. ClickHouse stopped for 30 s (``--quick``: 8 s) under steady load: the spool absorbs it, ``/readyz`` says
   so, the spool drains after ClickHouse returns (drain time reported).
b. The service SIGKILLed mid-load and restarted on the same spool: every 200'd event stored exactly once.
c. Slow ClickHouse (2 s per INSERT, 32 KiB per INSERT, 2 MiB spool cap): the cap is reached and the door
   answers 503 + Retry-After, never 500, never a silent drop; the collector's RSS stays bounded.
d. The spool's disk full (a real 1 MiB tmpfs; needs root, else skipped): clear 503s, recovery when space
   returns (time to the first 200 reported), nothing corrupted.
e. The SDK behind a TCP proxy that drops every third answer after the collector sent it: the SDK retries,
   every event is counted once.

    . /tmp/v/bin/activate && python bench/faults.py          # about 3 minutes on 2 cores
    python bench/faults.py --quick                           # about 1.5 minutes
    python bench/faults.py --only a,e --keep                 # some scenarios; keep the temp dir and logs

Exit status 0 when every scenario lost 0 and duplicated 0 (and refused only with Retry-After), 1
otherwise, 2 if the bench could not run. Every process it starts is stopped on every exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # testkit, the harness the tests use too, sits at the root (not installed)

from testkit.chhttp import ClickHouseHTTP  # noqa: E402
from testkit.net import basic  # noqa: E402
from testkit.service import Service, create_project, stop_leftover_postgres  # noqa: E402
from testkit.tcpproxy import CuttingProxy  # noqa: E402

USERS = 20


@dataclass
class Row:
    scenario: str
    sent: int = 0
    acked: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    notes: list[str] = field(default_factory=list)
    ok: bool = True


# --------------------------------------------------------------------------------------------------------
# load, measurement
# --------------------------------------------------------------------------------------------------------


class Load:
    """Steady load: ``workers`` senders, each ``rate`` batches/s of ``batch`` events (unique ids)."""

    def __init__(
        self, url: str, key: str, tag: str, *, workers: int = 4, rate: float = 5, batch: int = 50, pad: int = 100
    ):
        self.url, self.key, self.tag = url, key, tag
        self.workers, self.interval, self.batch, self.pad = workers, 1 / rate, batch, pad
        self.sent = 0
        self.acked: set[str] = set()
        self.refused: set[str] = set()
        self.unanswered: set[str] = set()
        self.statuses: Counter[int] = Counter()
        self.refused_without_retry_after = 0
        self.first_200_after: float | None = None  # set by mark(): the first 200 after that moment
        self._mark: float | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, http: aiohttp.ClientSession) -> "Load":
        self._tasks = [asyncio.create_task(self._worker(http, w)) for w in range(self.workers)]
        return self

    def mark(self) -> None:
        self._mark, self.first_200_after = time.monotonic(), None

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _worker(self, http: aiohttp.ClientSession, worker: int) -> None:
        n = 0
        while not self._stop.is_set():
            began = time.monotonic()
            ids = [f"{self.tag}-{worker}-{n}-{i}" for i in range(self.batch)]
            n += 1
            body = orjson.dumps(
                {
                    "batch": [
                        {
                            "type": "track",
                            "userId": f"u{(n + i) % USERS}",
                            "event": "Load",
                            "messageId": mid,
                            "properties": {"pad": "p" * self.pad},
                        }
                        for i, mid in enumerate(ids)
                    ]
                }
            )
            self.sent += len(ids)
            try:
                async with http.post(
                    f"{self.url}/v1/batch", data=body, headers=basic(self.key), timeout=aiohttp.ClientTimeout(total=30)
                ) as resp:
                    await resp.read()
                    self.statuses[resp.status] += 1
                    if resp.status == 200:
                        self.acked.update(ids)
                        if self._mark is not None and self.first_200_after is None:
                            self.first_200_after = time.monotonic() - self._mark
                    else:
                        self.refused.update(ids)
                        if resp.status in (429, 503) and "Retry-After" not in resp.headers:
                            self.refused_without_retry_after += 1
            except (aiohttp.ClientError, asyncio.TimeoutError):
                self.statuses[0] += 1  # no answer: the server died or hung under this request
                self.unanswered.update(ids)
                await asyncio.sleep(0.2)
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - began)))


class RssSampler:
    """Peak resident memory of the service process (collector and query service share it)."""

    def __init__(self) -> None:
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def start(self, pid: int) -> "RssSampler":
        async def sample() -> None:
            proc = psutil.Process(pid)
            while True:
                try:
                    self.peak = max(self.peak, proc.memory_info().rss)
                except psutil.Error:
                    return
                await asyncio.sleep(0.2)

        self._task = asyncio.create_task(sample())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def clickhouse_ids(ch: ClickHouseHTTP, project_id: str) -> dict[str, int]:
    """messageId → physical rows, straight from ClickHouse (before any read-side dedup)."""
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=ch.url)
    try:
        rows = client.query(
            "SELECT message_id, count() FROM events WHERE project_id = {p:String} GROUP BY message_id",
            parameters={"p": project_id},
        ).result_rows
    finally:
        client.close()
    return {r[0]: r[1] for r in rows}


async def read_back(http: aiohttp.ClientSession, service: Service, read_key: str) -> list[str]:
    """Every event id the query service returns, customer by customer (its dedup applied)."""
    seen: list[str] = []
    for c in range(USERS):
        async with http.get(f"{service.query}/v1/customers/u{c}/events?limit=10000", headers=basic(read_key)) as resp:
            seen.extend(e["message_id"] for e in (await resp.json())["events"])
    return seen


async def readyz(http: aiohttp.ClientSession, service: Service) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{service.collector}/readyz", timeout=aiohttp.ClientTimeout(total=10)) as resp:
        return resp.status, await resp.json()


async def wait_drained(http: aiohttp.ClientSession, service: Service, timeout: float = 120) -> float:
    """Seconds until the spool holds nothing un-inserted (and readiness is back)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        try:
            status, body = await readyz(http, service)
            if status == 200 and body["checks"]["spool"]["pending_bytes"] == 0:
                return time.monotonic() - began
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"spool not drained within {timeout}s")


async def account(
    row: Row,
    http: aiohttp.ClientSession,
    ch: ClickHouseHTTP,
    service: Service,
    keys: dict[str, str],
    acked: set[str],
    sent: int,
) -> dict[str, int]:
    stored = clickhouse_ids(ch, keys["id"])
    seen = await read_back(http, service, keys["read_key"])
    row.sent, row.acked, row.stored = sent, len(acked), len(stored)
    row.lost = len(acked - stored.keys())
    row.duplicated = len(seen) - len(set(seen))
    if set(seen) != set(stored):
        row.notes.append(f"READ≠STORED ({len(set(seen) ^ set(stored))} ids differ)")
        row.ok = False
    physical = sum(stored.values()) - len(stored)
    row.notes.append(f"physical dup rows {physical}")
    row.ok = row.ok and row.lost == 0 and row.duplicated == 0
    return stored


def fmt_mb(n: int) -> str:
    return f"{n / 1024 / 1024:.0f} MB"


# --------------------------------------------------------------------------------------------------------
# scenarios
# --------------------------------------------------------------------------------------------------------


@dataclass
class Bench:
    work: Path
    data: Path
    ch: ClickHouseHTTP
    quick: bool
    services: list[Service] = field(default_factory=list)

    def service(self, name: str, **env: str) -> Service:
        svc = Service(
            self.data,
            CLICKHOUSE_URL=self.ch.url,
            JOURNEYS_SPOOL_DIR=str(env.pop("spool", self.work / f"spool-{name}")),
            JOURNEYS_INSERT_LINGER_MS="50",
            **env,
        )
        self.services.append(svc)
        return svc.start(timeout=120)

    def stop_all(self) -> None:
        for svc in self.services:
            if svc.proc is not None and svc.proc.poll() is None:
                try:
                    svc.stop(timeout=60)
                except subprocess.TimeoutExpired:
                    svc.kill()

    async def a_clickhouse_outage(self, http: aiohttp.ClientSession) -> Row:
        outage = 8.0 if self.quick else 30.0
        row = Row(f"a. ClickHouse down {outage:.0f} s")
        keys = create_project(self.data, "faults-a")
        svc = self.service("a")
        rss = RssSampler().start(svc.proc.pid)  # type: ignore[union-attr]
        load = Load(svc.collector, keys["write_key"], "a").start(http)
        await asyncio.sleep(2)
        self.ch.stop()
        polls: Counter[str] = Counter()
        peak_spool = 0
        began = time.monotonic()
        while time.monotonic() - began < outage:
            status, body = await readyz(http, svc)
            polls[
                "503 clickhouse down" if status == 503 and not body["checks"]["clickhouse"]["ok"] else f"{status}"
            ] += 1
            peak_spool = max(peak_spool, body["checks"]["spool"]["pending_bytes"])
            await asyncio.sleep(1)
        self.ch.start()
        returned = time.monotonic()
        await asyncio.sleep(2)
        await load.stop()
        await wait_drained(http, svc)
        drained = time.monotonic() - returned
        await rss.stop()
        await account(row, http, self.ch, svc, keys, load.acked, load.sent)
        svc.stop()
        not_ready = polls["503 clickhouse down"]
        row.ok = row.ok and not_ready == sum(polls.values()) and set(load.statuses) == {200}
        row.notes[:0] = [
            f"statuses {dict(load.statuses)}",
            f"/readyz 503 in {not_ready}/{sum(polls.values())} polls during outage",
            f"spool peak {peak_spool / 1024:.0f} KiB",
            f"drained {drained:.1f} s after ClickHouse returned",
            f"max RSS {fmt_mb(rss.peak)}",
        ]
        return row

    async def b_sigkill(self, http: aiohttp.ClientSession) -> Row:
        row = Row("b. SIGKILL mid-load, restart")
        keys = create_project(self.data, "faults-b")
        svc = self.service("b")
        load = Load(svc.collector, keys["write_key"], "b", workers=6, rate=10).start(http)
        await asyncio.sleep(3 if self.quick else 8)
        svc.kill()
        killed = time.monotonic()
        await asyncio.sleep(0.5)
        await load.stop()
        svc2 = self.service("b", spool=str(self.work / "spool-b"))  # the same spool: its records are replayed
        up = time.monotonic() - killed
        drained = await wait_drained(http, svc2)
        stored = await account(row, http, self.ch, svc2, keys, load.acked, load.sent)
        svc2.stop()
        in_flight_stored = len(load.unanswered & stored.keys())
        stray = len(stored.keys() - load.acked - load.unanswered)
        row.ok = row.ok and stray == 0 and set(load.statuses) <= {0, 200}
        row.notes[:0] = [
            f"statuses {dict(load.statuses)}",
            f"unanswered around the kill {len(load.unanswered)} (in flight or refused after it; stored {in_flight_stored})",
            f"restart→up {up:.1f} s, replay drained {drained:.1f} s later",
        ]
        return row

    async def c_slow_clickhouse(self, http: aiohttp.ClientSession) -> Row:
        row = Row("c. slow ClickHouse, 2 MiB spool cap")
        keys = create_project(self.data, "faults-c")
        svc = self.service("c", JOURNEYS_SPOOL_MAX_BYTES=str(2 * 1024 * 1024), JOURNEYS_INSERT_MAX_BYTES=str(32 * 1024))
        self.ch.set_insert_delay(2.0)
        try:
            rss = RssSampler().start(svc.proc.pid)  # type: ignore[union-attr]
            load = Load(svc.collector, keys["write_key"], "c", workers=4, rate=10, pad=300).start(http)
            await asyncio.sleep(10 if self.quick else 25)
            await load.stop()
        finally:
            self.ch.set_insert_delay(0)
        drained = await wait_drained(http, svc)
        await rss.stop()
        stored = await account(row, http, self.ch, svc, keys, load.acked, load.sent)
        svc.stop()
        refused_stored = len(load.refused & stored.keys())
        errors = sum(n for s, n in load.statuses.items() if s >= 500 and s != 503)
        row.ok = (
            row.ok
            and refused_stored == 0
            and errors == 0
            and load.refused_without_retry_after == 0
            and load.statuses[503] > 0
        )
        row.notes[:0] = [
            f"statuses {dict(load.statuses)}",
            f"503 without Retry-After {load.refused_without_retry_after}",
            f"refused yet stored {refused_stored}",
            f"max RSS {fmt_mb(rss.peak)}",
            f"drained {drained:.1f} s after",
        ]
        return row

    async def d_disk_full(self, http: aiohttp.ClientSession) -> Row:
        row = Row("d. spool disk full (1 MiB tmpfs)")
        disk = self.work / "spool-disk"
        disk.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
        if mounted.returncode != 0:
            row.notes.append(f"skipped: cannot mount a tmpfs ({mounted.stderr.decode().strip()[:80]})")
            return row
        try:
            keys = create_project(self.data, "faults-d")
            svc = self.service("d", spool=str(disk / "spool"))
            load = Load(svc.collector, keys["write_key"], "d", workers=4, rate=10, pad=200).start(http)
            began = time.monotonic()
            while load.statuses[503] == 0 and time.monotonic() - began < 60:
                await asyncio.sleep(0.1)
            full_after = len(load.acked)
            await asyncio.sleep(3)
            status, ready = await readyz(http, svc)
            ready_error = ready["checks"]["spool"].get("error", "")
            subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
            load.mark()
            await asyncio.sleep(3)
            await load.stop()
            drained = await wait_drained(http, svc)
            stored = await account(row, http, self.ch, svc, keys, load.acked, load.sent)
            svc.stop()
        finally:
            subprocess.run(["umount", "-l", str(disk)], check=False)
        refused_stored = len(load.refused & stored.keys())
        recovered = load.first_200_after
        row.ok = (
            row.ok
            and refused_stored == 0
            and status == 503
            and recovered is not None
            and load.refused_without_retry_after == 0
            and set(load.statuses) <= {200, 503}
        )
        row.notes[:0] = [
            f"statuses {dict(load.statuses)}",
            f"full after {full_after} events acked",
            f"/readyz {status} ({ready_error})",
            f"refused yet stored {refused_stored}",
            f"first 200 {recovered:.2f} s after space returned" if recovered is not None else "never recovered",
            f"drained {drained:.1f} s",
        ]
        return row

    async def e_sdk_lost_answers(self, http: aiohttp.ClientSession) -> Row:
        from journeys_sdk import Client

        n = 5_000 if self.quick else 20_000
        row = Row("e. SDK, every 3rd answer lost (TCP)")
        keys = create_project(self.data, "faults-e")
        svc = self.service("e")
        proxy = await CuttingProxy("127.0.0.1", svc.collector_port, cut=lambda i: i % 3 == 0).start()
        client = Client(keys["write_key"], host=proxy.url, upload_size=200, upload_interval=0.05, backoff_base=0.02)
        ids = {f"e-{i}" for i in range(n)}
        try:
            for i in range(n):
                client.track(f"u{i % USERS}", "Sdk", {"i": i}, message_id=f"e-{i}")
            flushed = bool(await client.aflush(timeout=120))  # truthy: everything delivered
        finally:
            client.shutdown()
            await proxy.close()
        await wait_drained(http, svc)
        acked = ids if flushed and client.stats.failed == 0 else set()
        await account(row, http, self.ch, svc, keys, acked, n)
        svc.stop()
        row.ok = row.ok and flushed and client.stats.sent == n
        row.notes[:0] = [
            f"answers lost {proxy.cut_count}/{proxy.responses}",
            f"SDK retries {client.stats.retries}",
            f"SDK sent {client.stats.sent} failed {client.stats.failed}",
        ]
        return row


SCENARIOS: dict[str, Callable[[Bench, aiohttp.ClientSession], Any]] = {
    "a": Bench.a_clickhouse_outage,
    "b": Bench.b_sigkill,
    "c": Bench.c_slow_clickhouse,
    "d": Bench.d_disk_full,
    "e": Bench.e_sdk_lost_answers,
}


def print_table(rows: list[Row]) -> None:
    headers = ["scenario", "sent", "acked", "stored", "lost", "duplicated", "notes"]
    print("\n| " + " | ".join(headers) + " |")
    print("| " + " | ".join("---" for _ in headers) + " |")
    for r in rows:
        mark = "" if r.ok else " **FAIL**"
        print(
            f"| {r.scenario}{mark} | {r.sent} | {r.acked} | {r.stored} | {r.lost} | {r.duplicated} | {'; '.join(r.notes)} |"
        )


async def run(args: argparse.Namespace, work: Path) -> list[Row]:
    data = work / "data"
    data.mkdir()
    ch = ClickHouseHTTP(work / "ch").start()
    bench = Bench(work, data, ch, args.quick)
    rows: list[Row] = []
    try:
        async with aiohttp.ClientSession() as http:
            for name in args.only:
                began = time.monotonic()
                print(f"scenario {name} …", flush=True)
                try:
                    row = await SCENARIOS[name](bench, http)
                except Exception as exc:  # one scenario failing must not hide the others' figures
                    row = Row(f"{name}. (error)", ok=False, notes=[f"{type(exc).__name__}: {exc}"[:300]])
                    bench.stop_all()
                    if not ch.running:
                        ch.start()
                row.notes.append(f"{time.monotonic() - began:.0f} s")
                rows.append(row)
    finally:
        bench.stop_all()
        ch.close()
        stop_leftover_postgres(data)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter outage and load (about half the time)")
    parser.add_argument("--only", default="a,b,c,d,e", help="comma-separated scenarios (a-e)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    args = parser.parse_args()
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := [s for s in args.only if s not in SCENARIOS]:
        parser.error(f"unknown scenarios: {unknown}")
    for name in list(os.environ):
        if name.startswith("JOURNEYS_") or name in ("CLICKHOUSE_URL", "DATABASE_URL"):
            del os.environ[name]
    work = Path(tempfile.mkdtemp(prefix="journeys-faults-"))
    began = time.monotonic()
    try:
        rows = asyncio.run(asyncio.wait_for(run(args, work), timeout=900))
    except Exception as exc:
        print(f"bench could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    print(f"\n{time.monotonic() - began:.0f} s in all; {'PASS' if all(r.ok for r in rows) else 'FAIL'}")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
