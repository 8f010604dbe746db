"""The collector's watermark: a time before which every event this collector acknowledged is in ClickHouse.

Twice a second each collector upserts, in PostgreSQL's ``collector_watermarks`` (one row per spool), the
receive time of the oldest record still in its spool — not yet inserted, or its identity links not yet
resolved: the spool's checkpoint moves past a record only after both — or, when the spool holds nothing,
its clock at the moment it looked. The query service reads it (query/facts/updater.py) to say how much of
what was acknowledged the KPIs include; data flows one way, the collector writes and never reads it back.

Why it is true. A 200 is sent after the request's record is durable in the spool, and the record carries
the time it was appended, before the 200. The clock is read *before* the spool is looked at, so an event
acknowledged before that reading was durable before the look: either its record is still pending (then
the watermark is at most its append time, which is before the acknowledgement) or it is past the
checkpoint, i.e. in ClickHouse. Records are appended in time order, so the one at the checkpoint is the
oldest pending.

Each row says until when it counts (``expires_at``: 30 s after the last heartbeat). A collector that stops
answering stops holding the KPIs' position back then — its pending events, if any, are counted once it
is back and has inserted them, but until then the position does not wait for them. A collector stopping
cleanly with an empty spool deletes its row; one stopping with a backlog leaves it to expire.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from collector.appkeys import SPOOL, STORES
from collector.spool import Spool

log = logging.getLogger(__name__)

PUBLISH_EVERY_S = 0.5
EXPIRES_AFTER_S = 30.0

UPSERT_SQL = """
INSERT INTO collector_watermarks (collector_id, pending_since, heartbeat_at, expires_at)
VALUES ($1, $2, now(), now() + make_interval(secs => $3))
ON CONFLICT (collector_id) DO UPDATE
SET pending_since = EXCLUDED.pending_since, heartbeat_at = EXCLUDED.heartbeat_at, expires_at = EXCLUDED.expires_at
"""


async def watermark_ms(spool: Spool) -> int | None:
    """Every event acknowledged before the returned time (ms) is in ClickHouse; ``None`` if the spool moved
    under three looks in a row (the caller keeps its previous watermark, still true)."""
    now_ms = int(time.time() * 1000)  # first: see the module docstring
    for _ in range(3):
        checkpoint = spool.checkpoint
        if spool.durable_position <= checkpoint:
            return now_ms
        try:
            written = await asyncio.to_thread(spool.written_at_ms, checkpoint)
        except OSError:
            written = None
        if written is not None:
            # A record the checkpoint has passed meanwhile is older than the oldest pending: still true.
            return min(now_ms, written)
    return None


class WatermarkPublisher:
    def __init__(
        self, spool: Spool, pg: Any, *, every_s: float = PUBLISH_EVERY_S, expires_after_s: float = EXPIRES_AFTER_S
    ):
        self.spool = spool
        self.pg = pg
        self.collector_id = f"{socket.gethostname()}:{spool.directory.resolve()}"
        self.every_s = every_s
        self.expires_after_s = expires_after_s
        self.published_ms: int | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="collector-watermark")

    async def stop(self) -> None:
        """Stop publishing; delete the row if nothing is pending, else publish a last time and let it expire."""
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            if self.spool.durable_position <= self.spool.checkpoint:
                await self.pg.execute("DELETE FROM collector_watermarks WHERE collector_id = $1", self.collector_id)
            else:
                await self.publish()
        except Exception as exc:  # noqa: BLE001 - shutting down: the row expires by itself
            log.warning("collector watermark: could not write on shutdown (the row expires by itself): %s", exc)

    async def publish(self) -> None:
        at_ms = await watermark_ms(self.spool)
        at_ms = self.published_ms if at_ms is None else at_ms
        if at_ms is None:
            return
        await self.pg.execute(
            UPSERT_SQL, self.collector_id, datetime.fromtimestamp(at_ms / 1000, timezone.utc), self.expires_after_s
        )
        self.published_ms = at_ms

    async def _run(self) -> None:
        try:  # rows of collectors gone for a day (a container replaced, a spool moved) are only clutter
            await self.pg.execute("DELETE FROM collector_watermarks WHERE expires_at < now() - interval '1 day'")
        except Exception:  # noqa: BLE001 - clutter only; the loop below reports PostgreSQL trouble
            pass
        while not self._stop.is_set():
            try:
                await self.publish()
                if self._failing:
                    log.info("collector watermark: publishing again")
                self._failing = False
            except Exception as exc:  # noqa: BLE001 - never dies: PostgreSQL may be away for a while
                if not self._failing:
                    log.warning("collector watermark: cannot publish (KPIs will show they lag): %s", exc)
                self._failing = True
            try:
                await asyncio.wait_for(self._stop.wait(), self.every_s)
            except asyncio.TimeoutError:
                pass


async def publishing(app: web.Application) -> AsyncIterator[None]:
    """The collector app's cleanup context, after the one that opens the spool (so it stops first)."""
    published = WatermarkPublisher(app[SPOOL], app[STORES].pg)
    published.start()
    yield
    await published.stop()
