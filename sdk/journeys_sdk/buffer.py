"""The in-memory queue between recording calls and the consumer thread.

Bounded twice: by event count and by (estimated) bytes, because a count alone
lets a few fat events use unbounded memory during an outage.  ``put()`` never
waits: at a bound it returns the reason and the caller reports a drop.

It also does the bookkeeping ``flush()`` needs.  Events are numbered in arrival
order (``enqueued``) and the consumer, which handles them strictly in order,
advances ``settled`` as each one reaches a final state.  So "everything queued
before my flush is done" is just ``settled >= target``, which stays correct while
other threads keep recording.

What became of them is counted the same way: each ``settle()`` says how many of
its events were delivered (and quarantined) and the error that failed the rest,
and running totals are kept.  A flush needs the totals at two positions only,
where its window starts (what the previous flush reported up to) and its
target, so the buffer snapshots the totals as ``settled`` passes each waiting
flush's target: no per-event history is kept, however long nobody flushes.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from itertools import repeat
from operator import call
from typing import NamedTuple

from .encode import Entry
from .result import DropReason, FlushResult

__all__ = ["EventBuffer", "FlushTicket"]


class _Totals(NamedTuple):
    """Outcomes of the first ``settled`` events, in arrival order."""

    delivered: int = 0
    quarantined: int = 0
    failed: int = 0
    errors: int = 0  # settles that carried an error (to tell whether a window saw one)
    last_error: Exception | None = None


class _Mark:
    """A target some flushes wait for, and the totals there once ``settled`` reaches it."""

    __slots__ = ("waiting", "totals")

    def __init__(self, totals: _Totals | None) -> None:
        self.waiting = 0
        self.totals = totals


class FlushTicket(NamedTuple):
    """A flush in progress: the events ``[start, target)`` and the totals at ``start``."""

    start: int
    start_totals: _Totals
    target: int
    epoch: int
    dropped_before: int  # recording-call drops already reported by an earlier flush
    dropped_at: int  # recording-call drops counted when this flush began


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


class EventBuffer:
    """Bounded multi-producer, single-consumer FIFO of queued events.

    Only producers ever take ``put_lock``.  The consumer pops without it (a
    deque pop is atomic, and there is one consumer) and keeps its own byte
    counter, so a producer can never end up waiting for a lock held by the
    consumer thread, which would cost it a GIL switch interval (5 ms) to get
    the interpreter back.  Waking the consumer uses a bare lock as a binary
    semaphore for the same reason: ``threading.Event`` takes a lock that its
    waiter also holds.
    """

    __slots__ = (
        "put_lock",
        "items",
        "sizes",
        "bytes_in",
        "bytes_out",
        "max_count",
        "max_bytes",
        "wake_count",
        "wake_bytes",
        "_signal",
        "enqueued",
        "closed",
        "cond",
        "settled",
        "flush_target",
        "flush_calls",
        "parked",
        "outage_epoch",
        "_async_waiters",
        "totals",
        "reported",
        "reported_totals",
        "reported_dropped",
        "_marks",
    )

    def __init__(self, max_count: int, max_bytes: int, wake_count: int, wake_bytes: int) -> None:
        self.put_lock = threading.Lock()
        self.items: deque[Entry] = deque()
        # Sizes live in their own deque rather than in (event, size) pairs, to
        # keep queued entries free of anything the garbage collector must
        # track (see encode.Entry); its pauses land in callers' track().
        # Appended before the entry, so an entry the consumer sees always has
        # its size there already.
        self.sizes: deque[int] = deque()
        self.bytes_in = 0  # producers, under put_lock
        self.bytes_out = 0  # consumer only
        self.max_count = max_count
        self.max_bytes = max_bytes
        # A full batch is waiting: wake the consumer now rather than at the next
        # interval tick.  Checked against the signal's state so a burst pays for
        # one wake-up per batch, not one per event.
        self.wake_count = wake_count
        self.wake_bytes = wake_bytes
        self._signal = threading.Lock()
        self._signal.acquire()  # held = no pending wake-up
        self.enqueued = 0
        self.closed = False

        # flush() bookkeeping, under ``cond`` (producers never touch it).
        self.cond = threading.Condition(threading.Lock())
        self.settled = 0
        self.flush_target = 0
        self.flush_calls = 0
        # Overflow mode only: the collector has been down past the retry budget
        # and everything is parked on disk.  A flush then triggers one probe
        # and returns False if that fails (``outage_epoch`` counts failed
        # probes), rather than waiting for an outage to end.
        self.parked = False
        self.outage_epoch = 0
        self._async_waiters: list[tuple[int, int, asyncio.AbstractEventLoop, asyncio.Future[bool]]] = []
        # What became of the settled events (under ``cond``): running totals, the
        # position up to which a flush has reported them (and the totals there),
        # and the waiting flushes' targets.
        self.totals = _Totals()
        self.reported = 0
        self.reported_totals = _Totals()
        self.reported_dropped = 0
        self._marks: dict[int, _Mark] = {}

    @property
    def bytes(self) -> int:
        """Estimated bytes waiting in memory."""
        return self.bytes_in - self.bytes_out

    # -- producer side -------------------------------------------------------

    def put(self, item: Entry, size: int) -> DropReason | None:
        items = self.items
        with self.put_lock:
            if self.closed:
                return DropReason.SHUTDOWN
            n = len(items)
            if n >= self.max_count:
                return DropReason.QUEUE_FULL
            total = self.bytes_in + size
            pending = total - self.bytes_out
            if pending > self.max_bytes:
                return DropReason.QUEUE_BYTES
            self.sizes.append(size)
            items.append(item)
            self.bytes_in = total
            self.enqueued += 1
        if (n + 1 >= self.wake_count or pending >= self.wake_bytes) and self._signal.locked():
            self.notify()
        return None

    def notify(self) -> None:
        """Wake the consumer (cheap, never blocks)."""
        try:
            self._signal.release()
        except RuntimeError:
            pass  # another thread signalled first

    # -- consumer side -------------------------------------------------------

    def clear_wake(self) -> None:
        self._signal.acquire(False)

    def wait_wake(self, timeout: float) -> bool:
        return self._signal.acquire(True, max(0.0, timeout))

    def take(self, n: int) -> list[Entry]:
        """Pop up to ``n`` oldest events (consumer thread only)."""
        k = min(n, len(self.items))
        if not k:
            return []
        # map() keeps the pops in C, so this is quick and atomic enough to
        # never interleave with another consumer (there is none anyway).
        out = list(map(call, repeat(self.items.popleft, k)))
        self.bytes_out += sum(map(call, repeat(self.sizes.popleft, k)))
        return out

    def take_all(self) -> list[Entry]:
        return self.take(len(self.items))

    def settle(self, n: int, *, delivered: int, quarantined: int = 0, error: Exception | None = None) -> None:
        """Mark the next ``n`` events (in arrival order) as finished.

        ``delivered`` of them were acknowledged by the collector (``quarantined``
        of those kept aside as invalid); the rest failed.  ``error`` is what
        failed or quarantined them.
        """
        if n <= 0:
            return
        with self.cond:
            self._settle_locked(n, delivered, quarantined, error)
            self.cond.notify_all()
            if self._async_waiters:
                self._wake_async_locked()

    def record_inline(self, *, delivered: bool, quarantined: int = 0, error: Exception | None = None) -> None:
        """``sync_mode``: one event was queued and finished inside its recording call."""
        with self.cond:
            with self.put_lock:
                self.enqueued += 1
            self._settle_locked(1, int(delivered), quarantined, error)
            self.cond.notify_all()

    def _settle_locked(self, n: int, delivered: int, quarantined: int, error: Exception | None) -> None:
        before = self.settled
        t = self.totals
        if self._marks:
            for position, mark in self._marks.items():
                if mark.totals is None and before < position <= before + n:
                    mark.totals = _advance(t, position - before, delivered, quarantined, error)
        self.totals = _advance(t, n, delivered, quarantined, error)
        self.settled = before + n

    def add_recovered(self, n: int) -> None:
        """Events found on disk from an earlier process count as queued for flush()."""
        with self.put_lock:
            self.enqueued += n

    def set_parked(self, parked: bool) -> None:
        """Enter (counts as a failed probe) or leave the parked state."""
        with self.cond:
            self.parked = parked
            if parked:
                self.outage_epoch += 1
            self.cond.notify_all()
            if self._async_waiters:
                self._wake_async_locked()

    def flush_pending(self) -> bool:
        """Someone is waiting in flush() for events not yet finished."""
        return self.flush_target > self.settled

    # -- flush support -------------------------------------------------------

    def begin_flush(self, dropped: int = 0) -> FlushTicket:
        """Register a flush of everything queued so far; ``dropped`` is the running count of events
        recording calls have dropped.  Every ticket must end in ``end_flush()``."""
        with self.cond:
            target = self.enqueued
            if target > self.flush_target:
                self.flush_target = target
            self.flush_calls += 1
            mark = self._marks.get(target)
            if mark is None:
                mark = self._marks[target] = _Mark(self.totals if target <= self.settled else None)
            mark.waiting += 1
            ticket = FlushTicket(
                self.reported, self.reported_totals, target, self.outage_epoch, self.reported_dropped, dropped
            )
        self.notify()
        return ticket

    def end_flush(
        self, ticket: FlushTicket, pending_error: Exception | None = None, report: bool = True
    ) -> FlushResult:
        """What became of the ticket's events by now.  ``pending_error`` is the last failed attempt
        to deliver, for events still pending.  ``report`` (the result reaches a caller) moves the
        start of the next flush's window past what this one reported as finished."""
        with self.cond:
            mark = self._marks[ticket.target]
            end = min(ticket.target, self.settled)
            at_end = mark.totals if end == ticket.target else self.totals
            assert at_end is not None  # settled has reached the target, so its totals were taken
            mark.waiting -= 1
            if not mark.waiting:
                del self._marks[ticket.target]
            if report:
                if end > self.reported:
                    self.reported, self.reported_totals = end, at_end
                if ticket.dropped_at > self.reported_dropped:
                    self.reported_dropped = ticket.dropped_at
        start = ticket.start_totals
        pending = ticket.target - end
        error = at_end.last_error if at_end.errors > start.errors else None
        if pending and pending_error is not None:
            error = pending_error
        return FlushResult(
            queued=ticket.target - ticket.start,
            delivered=at_end.delivered - start.delivered,
            quarantined=at_end.quarantined - start.quarantined,
            failed=at_end.failed - start.failed,
            pending=pending,
            dropped=max(0, ticket.dropped_at - ticket.dropped_before),
            last_error=error,
        )

    def _gave_up_locked(self, epoch: int) -> bool:
        # Parked, and a probe made after this flush began has failed.
        return self.parked and self.outage_epoch > epoch

    def wait_settled(
        self,
        target: int,
        epoch: int,
        timeout: float | None,
        clock: Callable[[], float],
        alive: Callable[[], bool],
    ) -> bool:
        deadline = None if timeout is None else clock() + timeout
        with self.cond:
            while self.settled < target:
                if self._gave_up_locked(epoch) or not alive():
                    return False
                if deadline is None:
                    self.cond.wait(0.5)
                else:
                    remaining = deadline - clock()
                    if remaining <= 0:
                        return False
                    self.cond.wait(min(remaining, 0.5))
            return True

    def add_async_waiter(
        self, target: int, epoch: int, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[bool]
    ) -> None:
        with self.cond:
            self._async_waiters.append((target, epoch, loop, fut))
            self._wake_async_locked()

    def remove_async_waiter(self, fut: asyncio.Future[bool]) -> None:
        with self.cond:
            self._async_waiters = [w for w in self._async_waiters if w[3] is not fut]

    def _wake_async_locked(self) -> None:
        keep = []
        for waiter in self._async_waiters:
            target, epoch, loop, fut = waiter
            if self.settled >= target:
                value = True
            elif self._gave_up_locked(epoch):
                value = False
            else:
                keep.append(waiter)
                continue
            try:
                loop.call_soon_threadsafe(_resolve, fut, value)
            except RuntimeError:
                pass  # that event loop is closed; nobody is waiting any more
        self._async_waiters = keep


def _advance(t: _Totals, k: int, delivered: int, quarantined: int, error: Exception | None) -> _Totals:
    """``t`` after the first ``k`` events of a settle of ``delivered`` (``quarantined`` of them) and
    failed events.  Which of a batch's events failed (a rare event the background thread could not
    encode, among delivered ones) is not kept, so a window boundary inside such a batch takes the
    delivered ones first; whole batches, the usual case, are exact."""
    d = min(k, delivered)
    q = max(0, min(k - (delivered - quarantined), quarantined))
    f = max(0, k - delivered)
    if error is not None and (q or f):
        return _Totals(t.delivered + d, t.quarantined + q, t.failed + f, t.errors + 1, error)
    return _Totals(t.delivered + d, t.quarantined + q, t.failed + f, t.errors, t.last_error)
