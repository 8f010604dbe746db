"""Moves spooled records into ClickHouse, in order, in large inserts, until it is told to stop.

Large inserts matter: ClickHouse makes one part per insert, so a thousand tiny inserts a second would drown
it in merges. While the spool is caught up the inserter inserts at most once per linger interval, to gather more;
with a backlog (after an outage) it takes big bites straight away. A failed insert is retried with capped
exponential backoff, for ever: the spool holds the data, and its cap turns a long outage into 503s at the
door rather than lost events. What a record holds is :mod:`collector.records`' to say.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from collector.identity import IdentityGraph
from collector.records import LINKS, TABLES
from collector.spool import Record, Spool
from journeys.clickhouse import ClickHouse, ClickHouseError
from journeys.metrics import Metrics

log = logging.getLogger(__name__)


class Inserter:
    def __init__(
        self,
        spool: Spool,
        clickhouse: ClickHouse,
        metrics: Metrics,
        *,
        max_bytes: int = 32 * 1024 * 1024,
        linger_s: float = 0.25,
        identity: IdentityGraph | None = None,
    ):
        self.spool = spool
        self.clickhouse = clickhouse
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.linger_s = linger_s
        self.identity = identity
        self.healthy = True
        self.last_error: str | None = None
        self.newest_visible_ms: int | None = None
        self._stop = asyncio.Event()
        self._drain_deadline: float | None = None
        self._last_insert = time.monotonic()  # the first insert lingers too: a restart's burst goes in whole
        # How far the spool is in ClickHouse, ahead of its checkpoint when the checkpoint could not be written
        # (a full disk): a retry then writes the checkpoint again, not the rows.
        self._inserted_to = 0
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
        """Never dies: an unexpected error (disk, a bug) is logged, shown on /readyz and retried, because a
        dead inserter would let the spool fill silently until the door answers 503."""
        backoff = 0.2
        while True:
            try:
                await self._drain()
                return
            except Exception as exc:  # noqa: BLE001 - deliberately broad, see the docstring
                log.exception("inserter failed; retrying in %.1f s", backoff)
                self.metrics.clickhouse_errors.labels("inserter").inc()
                self.healthy = False
                self.last_error = f"inserter: {exc!r}"[:500]
                if self._stop.is_set() and self._past_deadline():
                    return
                await self._pause(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _drain(self) -> None:
        position = max(self.spool.checkpoint, self._inserted_to)
        if position > self.spool.checkpoint:  # a checkpoint the disk refused: write it again, not the rows
            await self.spool.commit(position)
            self.healthy, self.last_error = True, None
        while True:
            caught_up = self.spool.durable_position <= position
            if caught_up:
                if self._stop.is_set():
                    return
                await self.spool.wait_for_data(timeout=0.5)
                if self.spool.durable_position <= position:
                    continue
                # At most one insert per linger: a steady stream gathers into large inserts, while the
                # first event after a quiet spell only waits for what is left of the interval — at
                # low rates it is in ClickHouse (and on its way to the KPIs) at once.
                wait = self._last_insert + self.linger_s - time.monotonic()
                if wait > 0 and not self._stop.is_set():
                    await self._pause(wait)
            records, next_position = await self.spool.read(position, self.max_bytes)
            if records and not await self._insert_until_done(records):
                return  # stopping with ClickHouse unavailable: the spool keeps the batch
            self._last_insert = time.monotonic()
            if next_position > position:
                self._inserted_to = next_position
                await self.spool.commit(next_position)
                position = next_position

    async def _insert_until_done(self, records: list[Record]) -> bool:
        backoff = 0.2
        while True:
            try:
                await self._insert(records)
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

    async def _insert(self, records: list[Record]) -> None:
        by_kind: dict[int, list[bytes]] = {}
        for record in records:
            by_kind.setdefault(record.payload[0], []).append(record.payload[1:])
        links = by_kind.pop(LINKS[0], None)
        for kind in [k for k in by_kind if k not in TABLES]:
            # Only a bug or a spool written by another version makes these: skipping one kind of record is
            # better than stalling every event behind it. Loud, counted, and the data stays in the log line.
            log.error("spool: skipping %d records of unknown kind %r", len(by_kind[kind]), bytes([kind]))
            self.metrics.clickhouse_errors.labels("unknown_record").inc(len(by_kind.pop(kind)))
        for kind, chunks in sorted(by_kind.items()):
            table, columns = TABLES[kind]
            data = b"".join(chunks)
            began = time.perf_counter()
            await self.clickhouse.insert_lines(table, columns, data)
            self.metrics.insert_latency.labels(table).observe(time.perf_counter() - began)
            self.metrics.insert_rows.observe(data.count(b"\n"))
        if links and self.identity is not None:
            # After the events: a journey may briefly show an anonymous visit unstitched, never a link to
            # events that are not there. Re-resolving a link after a retry is a no-op.
            await self.identity.resolve([orjson.loads(line) for chunk in links for line in chunk.splitlines() if line])
        # Records are written at acknowledgement time, so this is when the newest visible event arrived.
        newest = records[-1].written_at_ms
        if self.newest_visible_ms is None or newest > self.newest_visible_ms:
            self.newest_visible_ms = newest
