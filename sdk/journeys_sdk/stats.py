"""Counters that make silent data loss visible.

Recording calls never raise, so an application that wants to alert on lost or
failed events reads ``client.stats``.  Counters are updated under one small lock
(the hot path only touches it when it drops an event) and read as an immutable
snapshot so a dashboard never sees a half-updated set.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .result import DropReason

__all__ = ["Stats", "StatsCounter"]


@dataclass(frozen=True, slots=True)
class Stats:
    """A point-in-time snapshot of a client's counters.

    ``queued`` counts events accepted by recording calls.  Each of them ends up
    in exactly one of ``sent``, ``failed``, ``dropped`` (the consumer-side
    reasons ``too_large``/``unserializable``), on disk (``overflow_pending``), or
    is still ``pending`` in memory.
    """

    queued: int = 0
    """Accepted by recording calls."""
    sent: int = 0
    """Acknowledged by the collector with a 2xx (includes ``quarantined``)."""
    quarantined: int = 0
    """Delivered but quarantined by the collector (reported to ``on_error``)."""
    failed: int = 0
    """Given up: non-retryable answer, retry budget exhausted, or shutdown deadline."""
    retries: int = 0
    """Requests re-sent after a retryable failure."""
    batches: int = 0
    """Batches acknowledged by the collector."""
    dropped: Mapping[DropReason, int] = field(default_factory=dict)
    """Events dropped, by reason (at enqueue or, for size/encoding, in the consumer)."""
    overflowed: int = 0
    """Events written to the on-disk overflow."""
    recovered: int = 0
    """Events found in the overflow directory at start-up (from an earlier process)."""
    pending: int = 0
    """Events waiting in memory right now."""
    pending_bytes: int = 0
    """Estimated serialized size of the events waiting in memory."""
    overflow_pending: int = 0
    """Events waiting on disk right now."""

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


class StatsCounter:
    """Mutable counters shared by the client (drops) and the consumer (everything else)."""

    __slots__ = (
        "lock",
        "sent",
        "quarantined",
        "failed",
        "retries",
        "batches",
        "dropped",
        "call_dropped",
        "overflowed",
        "recovered",
        "_warned",
    )

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = 0
        self.quarantined = 0
        self.failed = 0
        self.retries = 0
        self.batches = 0
        self.dropped: dict[DropReason, int] = {}
        # Of those, dropped by recording calls (never queued): flush() reports them.
        self.call_dropped = 0
        self.overflowed = 0
        self.recovered = 0
        # Reasons already logged; a burst against a full queue must produce one
        # log line, not one per event.
        self._warned: set[DropReason] = set()

    def drop(self, reason: DropReason, n: int = 1, *, at_call: bool = False) -> bool:
        """Count ``n`` dropped events (``at_call``: by a recording call, so never queued); return True
        if this reason should be logged now."""
        with self.lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + n
            if at_call:
                self.call_dropped += n
            if reason in self._warned:
                return False
            self._warned.add(reason)
            return True

    def rearm(self, reason: DropReason) -> int | None:
        """Allow ``reason`` to be logged again; return its total so far if it had been logged."""
        with self.lock:
            if reason not in self._warned:
                return None
            self._warned.discard(reason)
            return self.dropped.get(reason, 0)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def snapshot(
        self,
        *,
        queued: int,
        pending: int,
        pending_bytes: int,
        overflow_pending: int,
    ) -> Stats:
        with self.lock:
            return Stats(
                queued=queued,
                sent=self.sent,
                quarantined=self.quarantined,
                failed=self.failed,
                retries=self.retries,
                batches=self.batches,
                dropped=MappingProxyType(dict(self.dropped)),
                overflowed=self.overflowed,
                recovered=self.recovered,
                pending=pending,
                pending_bytes=pending_bytes,
                overflow_pending=overflow_pending,
            )
