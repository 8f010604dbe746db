"""The in-memory queue between recording calls and the consumer thread.

Bounded twice: by event count and by (estimated) bytes, because a count alone
lets a few fat events use unbounded memory during an outage.  ``put()`` never
waits: at a bound it returns the reason and the caller reports a drop.

It also does the bookkeeping ``flush()`` needs.  Events are numbered in arrival
order (``enqueued``) and the consumer, which handles them strictly in order,
advances ``settled`` as each one reaches a final state.  So "everything queued
before my flush is done" is just ``settled >= target``, which stays correct while
other threads keep recording.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from itertools import repeat
from operator import call

from .encode import Entry
from .result import DropReason

__all__ = ["EventBuffer"]


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

    def settle(self, n: int) -> None:
        """Mark the next ``n`` events (in arrival order) as finished."""
        if n <= 0:
            return
        with self.cond:
            self.settled += n
            self.cond.notify_all()
            if self._async_waiters:
                self._wake_async_locked()

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

    def begin_flush(self) -> tuple[int, int]:
        """Register a flush: returns (events to wait for, current outage epoch)."""
        target = self.enqueued
        with self.cond:
            if target > self.flush_target:
                self.flush_target = target
            self.flush_calls += 1
            epoch = self.outage_epoch
        self.notify()
        return target, epoch

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
