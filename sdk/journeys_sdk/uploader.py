"""Delivering one batch: attempt, classify, retry, and report the outcome.

Shared by the consumer thread and ``sync_mode`` so both follow exactly the same
retry rules.  What to do when the retry budget runs out is *not* decided here:
memory-only clients give the batch up, overflow clients park it on disk, so
``deliver()`` returns ``GAVE_UP`` and leaves that to the caller.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

from .encode import batch_body, format_timestamp
from .errors import DeliveryError, JourneysError, QuarantinedError
from .overflow import Segment
from .request import Acknowledgement, Transport, gzip_body
from .retry import Backoff, RetryPolicy
from .stats import StatsCounter

__all__ = ["Batch", "Outcome", "Uploader", "OnError"]

log = logging.getLogger("journeys_sdk")

OnError = Callable[[JourneysError, list[dict[str, Any]]], object]
"""``on_error(exc, events)``: called on the consumer thread with the affected events."""


class Batch:
    """Encoded events travelling together, plus where they came from.

    Only the encoded bytes are kept (they are what gets resent on retry, and
    bytes are invisible to the garbage collector); ``on_error`` handlers get
    them decoded back, i.e. exactly what was sent.

    ``settles`` counts the queued events this batch accounts for: its events
    plus any the consumer dropped while building it (too large, not encodable).
    They finish together, which keeps ``flush()`` bookkeeping in arrival order.
    ``quarantined`` and ``error`` are what the last report said about it (for
    ``flush()``'s counts).
    """

    __slots__ = ("events", "nbytes", "segment", "settles", "quarantined", "error")

    def __init__(self) -> None:
        self.events: list[bytes] = []
        self.nbytes = 0
        self.segment: Segment | None = None
        self.settles = 0
        self.quarantined = 0
        self.error: JourneysError | None = None

    @classmethod
    def from_segment(cls, seg: Segment, events: list[bytes]) -> Batch:
        b = cls()
        b.events = events
        b.nbytes = sum(map(len, events)) + len(events)
        b.segment = seg
        b.settles = seg.count
        return b

    def add(self, raw: bytes) -> None:
        self.events.append(raw)
        self.nbytes += len(raw) + 1
        self.settles += 1

    def __len__(self) -> int:
        return len(self.events)

    def decoded(self, indexes: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """The events as dicts (for on_error), optionally only those at ``indexes``."""
        idx = range(len(self.events)) if indexes is None else indexes
        out = []
        for i in idx:
            if 0 <= i < len(self.events):
                try:
                    out.append(json.loads(self.events[i]))
                except ValueError:
                    out.append({"raw": self.events[i].decode("utf-8", "replace")})
        return out


class Outcome(Enum):
    DELIVERED = "delivered"
    FAILED = "failed"
    """Non-retryable answer; already reported."""
    GAVE_UP = "gave_up"
    """Retry budget exhausted; *not* reported, the caller decides."""
    ABORTED = "aborted"
    """Stopped by the caller's sleep hook (shutdown deadline); not reported."""


def _now_iso() -> str:
    return format_timestamp(time.time())


class Uploader:
    def __init__(
        self,
        transport: Transport,
        policy: RetryPolicy,
        stats: StatsCounter,
        on_error: OnError | None,
        gzip_level: int,
    ) -> None:
        self.transport = transport
        self.policy = policy
        self.stats = stats
        self.on_error = on_error
        self.gzip_level = gzip_level
        # The last failed attempt, until a delivery succeeds: what a flush that
        # returns with events still pending reports as its ``last_error``.
        self.last_error: DeliveryError | None = None

    def attempt(self, batch: Batch) -> Acknowledgement:
        """One request.  Same encoded events (same messageIds) every time; fresh sentAt."""
        body = gzip_body(batch_body(batch.events, _now_iso()), self.gzip_level)
        return self.transport.post(body)

    def deliver(self, batch: Batch, sleep: Callable[[float], bool]) -> tuple[Outcome, DeliveryError | None, Backoff]:
        """Send ``batch`` until acknowledged, refused, or out of budget.

        ``sleep(seconds)`` waits between attempts and returns False to abort.
        """
        backoff = Backoff(self.policy)
        while True:
            try:
                ack = self.attempt(batch)
            except DeliveryError as exc:
                # Kept across a backoff wait (for Retry-After and the final
                # report); its traceback would keep the failed request's frames
                # and response objects alive, as garbage-collector work.
                exc.__traceback__ = None
                if exc.__cause__ is not None:
                    exc.__cause__.__traceback__ = None
                self.last_error = exc
                if not exc.retryable:
                    self.report_failed(batch, exc)
                    return Outcome.FAILED, exc, backoff
                delay = backoff.next_delay(getattr(exc, "retry_after", None))
                if delay is None:
                    return Outcome.GAVE_UP, exc, backoff
                log.debug("journeys-sdk: batch of %d failed (%s); retry in %.2fs", len(batch), exc, delay)
                if not sleep(delay):
                    return Outcome.ABORTED, exc, backoff
                self.stats.add(retries=1)
                continue
            self.report_delivered(batch, ack)
            return Outcome.DELIVERED, None, backoff

    def report_delivered(self, batch: Batch, ack: Acknowledgement) -> None:
        n = len(batch)
        self.last_error = None
        self.stats.add(sent=n, batches=1, quarantined=len(ack.quarantined))
        batch.quarantined = len(ack.quarantined)
        batch.error = None
        if ack.quarantined:
            log.warning("journeys-sdk: collector quarantined %d of %d events", len(ack.quarantined), n)
            batch.error = error = QuarantinedError(ack.quarantined)
            self.notify(error, batch.decoded([i for i, _ in ack.quarantined]))

    def report_failed(self, batch: Batch, exc: JourneysError) -> None:
        batch.error = exc
        self.stats.add(failed=len(batch))
        log.error("journeys-sdk: %d events not delivered: %s", len(batch), exc)
        self.notify(exc, batch.decoded())

    def notify(self, exc: JourneysError, events: list[dict[str, Any]]) -> None:
        if self.on_error is None:
            return
        try:
            self.on_error(exc, events)
        except Exception:
            log.exception("journeys-sdk: on_error callback raised")
