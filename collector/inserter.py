"""Moves spooled records into ClickHouse, in order, in large inserts, until it is told to stop.

Large inserts matter: ClickHouse makes one part per insert, so a thousand tiny inserts a second would drown
it in merges. While the spool is caught up the inserter lingers a few milliseconds to gather more; with a
backlog (after an outage) it takes big bites straight away. A failed insert is retried with capped
exponential backoff, for ever: the spool holds the data, and its cap turns a long outage into 503s at the
door rather than lost events.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from collector.spool import Spool
from journeys.clickhouse import ClickHouse, ClickHouseError
from journeys.events import EVENT_COLUMNS, QUARANTINE_COLUMNS
from journeys.metrics import Metrics

log = logging.getLogger(__name__)

_RECEIVED_AT = EVENT_COLUMNS.index("received_at")


def encode_record(event_rows: list[tuple], quarantine_rows: list[tuple]) -> bytes:
    """The spool payload for one request: its event rows and its quarantine rows."""
    return orjson.dumps([event_rows, quarantine_rows])


class Inserter:
    def __init__(
        self,
        spool: Spool,
        clickhouse: ClickHouse,
        metrics: Metrics,
        *,
        max_rows: int = 100_000,
        max_bytes: int = 32 * 1024 * 1024,
        linger_s: float = 0.05,
    ):
        self.spool = spool
        self.clickhouse = clickhouse
        self.metrics = metrics
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.linger_s = linger_s
        self.healthy = True
        self.last_error: str | None = None
        self.newest_visible_ms: int | None = None
        self._stop = asyncio.Event()
        self._drain_deadline: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="clickhouse-inserter")

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Insert what is spooled for up to ``drain_timeout`` s, then stop; the rest waits in the spool."""
        self._drain_deadline = time.monotonic() + drain_timeout
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, drain_timeout + 5)
            except asyncio.TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)

    def _past_deadline(self) -> bool:
        return self._drain_deadline is not None and time.monotonic() > self._drain_deadline

    async def _run(self) -> None:
        position = self.spool.checkpoint
        while True:
            caught_up = self.spool.durable_position <= position
            if caught_up:
                if self._stop.is_set():
                    return
                await self.spool.wait_for_data(timeout=0.5)
                if self.spool.durable_position <= position:
                    continue
                if self.linger_s and not self._stop.is_set():
                    await self._pause(self.linger_s)
            records, next_position = await self.spool.read(position, self.max_bytes)
            if records:
                events: list[tuple] = []
                quarantine: list[tuple] = []
                for record in records:
                    e_rows, q_rows = orjson.loads(record.payload)
                    events.extend(e_rows)
                    quarantine.extend(q_rows)
                if not await self._insert_until_done(events, quarantine):
                    return  # stopping with ClickHouse unavailable: the spool keeps the batch
            if next_position > position:
                await self.spool.commit(next_position)
                position = next_position

    async def _insert_until_done(self, events: list[tuple], quarantine: list[tuple]) -> bool:
        backoff = 0.2
        while True:
            try:
                await self._insert(events, quarantine)
            except ClickHouseError as exc:
                self.metrics.clickhouse_errors.labels("insert").inc()
                if self.healthy:
                    log.error("ClickHouse insert failed; events stay in the spool and will be retried: %s", exc)
                self.healthy = False
                self.last_error = str(exc)[:500]
                if self._stop.is_set() and self._past_deadline():
                    return False
                await self._pause(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if not self.healthy:
                log.info("ClickHouse inserts recovered")
            self.healthy = True
            self.last_error = None
            return True

    async def _pause(self, seconds: float) -> None:
        """Sleep (linger, retry backoff), waking early when asked to stop so shutdown drains at once."""
        if self._stop.is_set():
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _insert(self, events: list[tuple], quarantine: list[tuple]) -> None:
        for table, rows, columns in (("events", events, EVENT_COLUMNS), ("quarantine", quarantine, QUARANTINE_COLUMNS)):
            for start in range(0, len(rows), self.max_rows):
                chunk = rows[start : start + self.max_rows]
                began = time.perf_counter()
                await self.clickhouse.insert(table, list(zip(*chunk)), columns)
                self.metrics.insert_latency.labels(table).observe(time.perf_counter() - began)
                self.metrics.insert_rows.observe(len(chunk))
        if events:
            newest = max(row[_RECEIVED_AT] for row in events)
            if self.newest_visible_ms is None or newest > self.newest_visible_ms:
                self.newest_visible_ms = newest
