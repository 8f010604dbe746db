"""The background thread: batch queued events and upload them, in order.

One consumer per client (and per process: a forked child starts its own).  It
is the only code that encodes events, talks to the collector, and touches the
overflow directory, so none of that needs locking, and order is easy to keep:

* batches are taken strictly oldest-first;
* while the on-disk overflow holds anything it is drained before memory,
  because everything on disk is older than anything still in memory;
* when spilling, the batch being retried goes to disk first, then the
  encoded-but-unbatched carry, then the queue.

A batch is cut when it reaches ``upload_size`` events, would exceed the
request-size limit, ``upload_interval`` has passed, or someone is waiting in
``flush()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from .buffer import EventBuffer
from .encode import MAX_EVENT_BYTES, Entry, build_event, encode_event
from .errors import (
    DeliveryError,
    EventTooLargeError,
    JourneysError,
    RetryBudgetExceeded,
    SerializationError,
    ShutdownError,
)
from .overflow import OverflowStore
from .result import DropReason
from .stats import StatsCounter
from .uploader import Batch, Outcome, Uploader

__all__ = ["Consumer"]

log = logging.getLogger("journeys_sdk")

# An entry of the carry: encoded bytes, or None for an event the consumer
# dropped.  Dropped events keep their place so that flush() bookkeeping, which
# counts events in arrival order, stays exact.
_Encoded = bytes | None

# While retrying, how often to look for work that cannot wait for the backoff
# to end (spilling a filling queue to disk, an abort from shutdown()).
_POLL = 0.05


class Consumer(threading.Thread):
    def __init__(
        self,
        buffer: EventBuffer,
        uploader: Uploader,
        stats: StatsCounter,
        *,
        upload_size: int,
        upload_interval: float,
        max_body_bytes: int,
        overflow: OverflowStore | None,
    ) -> None:
        super().__init__(name="journeys-sdk-consumer", daemon=True)
        self._buffer = buffer
        self._uploader = uploader
        self._stats = stats
        self._upload_size = upload_size
        self._interval = upload_interval
        self._max_body = max_body_bytes
        self.overflow = overflow
        self._carry: deque[_Encoded] = deque()
        self._inflight: Batch | None = None
        self._stopping = threading.Event()
        self._aborting = threading.Event()
        self._disk_full_warned = False
        # Why the consumer last dropped an event itself (too large, not
        # encodable): the error flush() reports for it when its batch settles.
        self._drop_error: JourneysError | None = None

    # -- control (called from other threads) ---------------------------------

    @property
    def last_error(self) -> DeliveryError | None:
        """The last failed delivery attempt, until one succeeds."""
        return self._uploader.last_error

    def stop(self, abort: bool) -> None:
        """Finish up and exit.  ``abort`` gives up on retries instead of draining."""
        if abort:
            self._aborting.set()
        self._stopping.set()
        self._buffer.notify()

    # -- main loop ------------------------------------------------------------

    def run(self) -> None:
        try:
            while True:
                try:
                    batch = self._next_batch()
                    if batch is None:
                        break
                    self._send(batch)
                except Exception:
                    # A bug here must not silently end delivery for the life of
                    # the process; log it and keep going.
                    log.exception("journeys-sdk: consumer error")
                    self._aborting.wait(0.1)
            self._finish()
        except Exception:
            log.exception("journeys-sdk: consumer failed while stopping")
        finally:
            self._uploader.transport.close()
            if self.overflow is not None:
                self.overflow.close()

    def _next_batch(self) -> Batch | None:
        buf = self._buffer
        deadline = time.monotonic() + self._interval
        batch = Batch()
        while True:
            buf.clear_wake()
            if self._aborting.is_set():
                self._unread(batch)
                return None
            stopping = self._stopping.is_set()
            overflow = self.overflow
            if not batch.settles and not stopping and overflow is not None and len(overflow):
                return self._read_segment(overflow)
            if self._fill(batch):
                return batch
            if stopping:
                return batch if batch.settles else None
            if batch.settles and buf.flush_pending():
                return batch
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if batch.settles:
                    return batch
                deadline = time.monotonic() + self._interval
                remaining = self._interval
            buf.wait_wake(remaining)

    def _read_segment(self, overflow: OverflowStore) -> Batch:
        seg = overflow.head()
        assert seg is not None
        try:
            events = seg.read()
        except OSError as exc:
            log.error("journeys-sdk: unreadable overflow segment %s (%s); skipping it", seg.path, exc)
            overflow.remove(seg)
            self._stats.add(failed=seg.count)
            self._buffer.settle(
                seg.count, delivered=0, error=DeliveryError(f"unreadable overflow segment {seg.path}: {exc}")
            )
            return Batch()
        return Batch.from_segment(seg, events)

    def _fill(self, batch: Batch) -> bool:
        """Top ``batch`` up from the carry and the queue; True when it is full."""
        carry = self._carry
        limit = self._max_body
        while len(batch.events) < self._upload_size:
            if not carry:
                items = self._buffer.take(self._upload_size - len(batch.events))
                if not items:
                    return False
                self._encode(items)
                continue
            raw = carry[0]
            if raw is None:
                carry.popleft()
                batch.settles += 1
                continue
            if batch.events and batch.nbytes + len(raw) + 1 > limit:
                return True
            carry.popleft()
            batch.add(raw)
        return True

    def _encode(self, items: list[Entry]) -> None:
        append = self._carry.append
        for entry in items:
            msg = None
            try:
                msg = build_event(entry)
                raw = encode_event(msg)
            except (ValueError, TypeError, RecursionError) as exc:
                if msg is None:
                    msg = {"messageId": entry[1], "type": entry[0]}
                self._drop(DropReason.UNSERIALIZABLE, SerializationError(f"cannot encode event as JSON: {exc}"), msg)
                append(None)
                continue
            if len(raw) > MAX_EVENT_BYTES:
                self._drop(DropReason.TOO_LARGE, EventTooLargeError(len(raw), MAX_EVENT_BYTES), msg)
                append(None)
                continue
            append(raw)

    def _drop(self, reason: DropReason, exc: JourneysError, msg: dict[str, Any]) -> None:
        self._drop_error = exc
        if self._stats.drop(reason):
            log.warning(
                "journeys-sdk: dropping event %s: %s (further %s drops are only counted in client.stats)",
                msg.get("messageId"),
                exc,
                reason.value,
            )
        self._uploader.notify(exc, [msg])

    def _unread(self, batch: Batch) -> None:
        """Put a partly built batch back at the front of the carry."""
        if batch.segment is not None or not batch.settles:
            return
        entries: list[_Encoded] = list(batch.events)
        entries += [None] * (batch.settles - len(entries))
        self._carry.extendleft(reversed(entries))

    # -- delivery ---------------------------------------------------------------

    def _send(self, batch: Batch) -> None:
        if not batch.events:
            # Only dropped events (or an unreadable segment): nothing to send,
            # but their place in line is now done.
            if batch.segment is not None and self.overflow is not None:
                self.overflow.remove(batch.segment)
            self._buffer.settle(batch.settles, delivered=0, error=self._drop_error)
            return
        self._inflight = batch
        try:
            outcome, err, backoff = self._uploader.deliver(batch, self._sleep)
            if outcome is Outcome.GAVE_UP:
                assert err is not None
                if self.overflow is not None and self._persist_inflight():
                    if self._stopping.is_set():
                        return  # safe on disk; the next process replays it
                    outcome = self._park(batch, err)
                else:
                    self._uploader.report_failed(batch, RetryBudgetExceeded(err, backoff.retries + 1, backoff.elapsed))
                    outcome = Outcome.FAILED
            if outcome is Outcome.ABORTED:
                if self.overflow is not None and self._persist_inflight():
                    return  # safe on disk; the next process replays it
                self._uploader.report_failed(
                    batch, ShutdownError("client shut down before these events were delivered")
                )
                outcome = Outcome.FAILED
            if batch.segment is not None and self.overflow is not None:
                self.overflow.remove(batch.segment)
            delivered = len(batch.events) if outcome is Outcome.DELIVERED else 0
            error = batch.error
            if error is None and batch.settles > len(batch.events):
                error = self._drop_error  # events dropped while the batch was built
            self._buffer.settle(batch.settles, delivered=delivered, quarantined=batch.quarantined, error=error)
            if outcome is Outcome.DELIVERED:
                self._rearm_drop_logs()
        finally:
            self._inflight = None

    def _sleep(self, seconds: float, flush_mark: int | None = None) -> bool:
        """Wait between attempts; spill to disk meanwhile if needed.  False = abort.

        With ``flush_mark``, a flush() called since the mark ends the wait early.
        """
        deadline = time.monotonic() + seconds
        while True:
            if self._aborting.is_set():
                return False
            if self.overflow is not None and self._should_spill():
                self._spill()
            if flush_mark is not None and self._buffer.flush_calls != flush_mark:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            self._aborting.wait(min(remaining, _POLL))

    def _park(self, batch: Batch, err: DeliveryError) -> Outcome:
        """Overflow mode, budget exhausted: keep everything on disk and probe until the collector is back."""
        log.warning(
            "journeys-sdk: collector unavailable past the retry budget (%s); keeping events in %s until it is back",
            err,
            self.overflow.directory if self.overflow else "?",
        )
        buf = self._buffer
        self._spill()
        buf.set_parked(True)
        try:
            policy = self._uploader.policy
            while True:
                # Probe at the backoff cap, or as soon as someone flushes.
                mark = buf.flush_calls
                delay = policy.delay(64, getattr(err, "retry_after", None))
                if not self._sleep(delay, flush_mark=mark):
                    return Outcome.ABORTED
                self._stats.add(retries=1)
                try:
                    ack = self._uploader.attempt(batch)
                except DeliveryError as exc:
                    exc.__traceback__ = None  # see Uploader.deliver
                    self._uploader.last_error = exc
                    if not exc.retryable:
                        self._uploader.report_failed(batch, exc)
                        return Outcome.FAILED
                    err = exc
                    self._spill()
                    buf.set_parked(True)  # tells waiting flushes this probe failed
                    continue
                log.warning("journeys-sdk: collector reachable again; replaying overflow")
                self._uploader.report_delivered(batch, ack)
                return Outcome.DELIVERED
        finally:
            self._buffer.set_parked(False)

    def _rearm_drop_logs(self) -> None:
        buf = self._buffer
        if len(buf.items) * 2 < buf.max_count and buf.bytes * 2 < buf.max_bytes:
            for reason in (DropReason.QUEUE_FULL, DropReason.QUEUE_BYTES):
                total = self._stats.rearm(reason)
                if total is not None:
                    log.warning(
                        "journeys-sdk: queue has room again (%d events dropped so far: %s)", total, reason.value
                    )

    # -- overflow -----------------------------------------------------------------

    def _should_spill(self) -> bool:
        buf = self._buffer
        return (
            buf.parked
            or self._stopping.is_set()
            or len(buf.items) * 2 >= buf.max_count
            or buf.bytes * 2 >= buf.max_bytes
        )

    def _persist_inflight(self) -> bool:
        """Make sure the batch being retried is on disk before anything newer goes there."""
        batch, overflow = self._inflight, self.overflow
        if batch is None or batch.segment is not None:
            return True
        if overflow is None:
            return False
        seg = overflow.append(batch.events, batch.settles)
        if seg is None:
            self._warn_disk_full()
            return False
        batch.segment = seg
        self._stats.add(overflowed=len(batch.events))
        return True

    def _spill(self) -> bool:
        """Move the carry and the queue to disk, oldest first; False if the disk bound stopped it."""
        overflow = self.overflow
        if overflow is None or not self._persist_inflight():
            return False
        carry = self._carry
        limit = self._max_body
        while True:
            if not carry:
                items = self._buffer.take(self._upload_size)
                if not items:
                    return True
                self._encode(items)
                continue
            chunk: list[_Encoded] = []
            events: list[bytes] = []
            nbytes = 0
            while carry and len(events) < self._upload_size:
                raw = carry[0]
                if raw is not None and events and nbytes + len(raw) + 1 > limit:
                    break
                chunk.append(carry.popleft())
                if raw is not None:
                    events.append(raw)
                    nbytes += len(raw) + 1
            if overflow.append(events, len(chunk)) is None:
                carry.extendleft(reversed(chunk))
                self._warn_disk_full()
                return False
            self._stats.add(overflowed=len(events))

    def _warn_disk_full(self) -> None:
        if not self._disk_full_warned:
            self._disk_full_warned = True
            log.warning(
                "journeys-sdk: overflow_dir is full (max_overflow_bytes); events stay in memory "
                "and will be dropped once the queue bounds are reached"
            )

    # -- stopping -------------------------------------------------------------------

    def _finish(self) -> None:
        """Deal with whatever is still in memory when the thread stops."""
        if self.overflow is not None and self._spill():
            return
        self._encode(self._buffer.take_all())
        batch = Batch()
        while self._carry:
            raw = self._carry.popleft()
            if raw is None:
                batch.settles += 1
            else:
                batch.add(raw)
        if batch.events:
            self._uploader.report_failed(batch, ShutdownError("client shut down before these events were delivered"))
        self._buffer.settle(batch.settles, delivered=0, error=batch.error or self._drop_error)
