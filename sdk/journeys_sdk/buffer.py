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
from typing import Any

from .result import DropReason

__all__ = ["EventBuffer", "Item"]

Item = tuple[dict[str, Any], int]
"""A queued event and its estimated size."""


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


class EventBuffer:
    __slots__ = (
        "lock",
        "settled_cond",
        "items",
        "bytes",
        "max_count",
        "max_bytes",
        "wake_count",
        "wake_bytes",
        "wake",
        "enqueued",
        "settled",
        "flush_target",
        "closed",
        "parked",
        "_async_waiters",
    )

    def __init__(self, max_count: int, max_bytes: int, wake_count: int, wake_bytes: int) -> None:
        self.lock = threading.Lock()
        self.settled_cond = threading.Condition(self.lock)
        self.items: deque[Item] = deque()
        self.bytes = 0
        self.max_count = max_count
        self.max_bytes = max_bytes
        # A full batch is waiting: wake the consumer now rather than at the next
        # interval tick.  Checked against a flag so a burst pays for one wake-up
        # per batch, not one per event.
        self.wake_count = wake_count
        self.wake_bytes = wake_bytes
        self.wake = threading.Event()
        self.enqueued = 0
        self.settled = 0
        self.flush_target = 0
        self.closed = False
        # Overflow mode only: the collector has been down past the retry budget
        # and everything is parked on disk.  Flushes return False instead of
        # waiting for an outage to end.
        self.parked = False
        self._async_waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[bool]]] = []

    # -- producer side -------------------------------------------------------

    def put(self, item: dict[str, Any], size: int) -> DropReason | None:
        with self.lock:
            if self.closed:
                return DropReason.SHUTDOWN
            items = self.items
            if len(items) >= self.max_count:
                return DropReason.QUEUE_FULL
            total = self.bytes + size
            if total > self.max_bytes:
                return DropReason.QUEUE_BYTES
            items.append((item, size))
            self.bytes = total
            self.enqueued += 1
            n = len(items)
        if (n >= self.wake_count or total >= self.wake_bytes) and not self.wake.is_set():
            self.wake.set()
        return None

    # -- consumer side -------------------------------------------------------

    def take(self, n: int) -> list[Item]:
        """Pop up to ``n`` oldest events."""
        with self.lock:
            items = self.items
            k = min(n, len(items))
            if not k:
                return []
            popleft = items.popleft
            out = [popleft() for _ in range(k)]
            self.bytes -= sum(s for _, s in out)
            return out

    def take_all(self) -> list[Item]:
        with self.lock:
            out = list(self.items)
            self.items.clear()
            self.bytes = 0
            return out

    def settle(self, n: int) -> None:
        """Mark the next ``n`` events (in arrival order) as finished."""
        if n <= 0:
            return
        with self.lock:
            self.settled += n
            self.settled_cond.notify_all()
            if self._async_waiters:
                self._wake_async_locked()

    def add_recovered(self, n: int) -> None:
        """Events found on disk from an earlier process count as queued for flush()."""
        with self.lock:
            self.enqueued += n

    def set_parked(self, parked: bool) -> None:
        with self.lock:
            self.parked = parked
            self.settled_cond.notify_all()
            if self._async_waiters:
                self._wake_async_locked()

    def flush_pending(self) -> bool:
        """Someone is waiting in flush() for events not yet finished."""
        return self.flush_target > self.settled

    # -- flush support -------------------------------------------------------

    def begin_flush(self) -> int:
        with self.lock:
            target = self.enqueued
            if target > self.flush_target:
                self.flush_target = target
        self.wake.set()
        return target

    def wait_settled(
        self, target: int, timeout: float | None, clock: Callable[[], float], alive: Callable[[], bool]
    ) -> bool:
        deadline = None if timeout is None else clock() + timeout
        with self.lock:
            while self.settled < target:
                if (self.parked and not self.items) or not alive():
                    return False
                if deadline is None:
                    self.settled_cond.wait(0.5)
                else:
                    remaining = deadline - clock()
                    if remaining <= 0:
                        return False
                    self.settled_cond.wait(min(remaining, 0.5))
            return True

    def add_async_waiter(
        self, target: int, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[bool]
    ) -> None:
        with self.lock:
            self._async_waiters.append((target, loop, fut))
            self._wake_async_locked()

    def remove_async_waiter(self, fut: asyncio.Future[bool]) -> None:
        with self.lock:
            self._async_waiters = [w for w in self._async_waiters if w[2] is not fut]

    def _wake_async_locked(self) -> None:
        keep = []
        for target, loop, fut in self._async_waiters:
            if self.settled >= target:
                value = True
            elif self.parked and not self.items:
                value = False
            else:
                keep.append((target, loop, fut))
                continue
            try:
                loop.call_soon_threadsafe(_resolve, fut, value)
            except RuntimeError:
                pass  # that event loop is closed; nobody is waiting any more
        self._async_waiters = keep
