"""What an enqueue call (``track()``, ``identify()``, ...) and a ``flush()`` tell their caller.

Recording methods never raise and never block, so the only way to learn that an
event was *not* accepted is the returned value.  It is deliberately cheap: one
small slotted object per call, no copy of the event.

``flush()`` answers with a ``FlushResult``: truthy only when every event it
covers reached the collector and was taken in, with the counts and the last
error otherwise.
"""

from __future__ import annotations

from enum import StrEnum
from typing import final

__all__ = ["DropReason", "EnqueueResult", "FlushResult", "Status"]


class Status(StrEnum):
    """Outcome of one recording call."""

    QUEUED = "queued"
    """Accepted; the background consumer will deliver it."""
    DELIVERED = "delivered"
    """``sync_mode``: the collector acknowledged it before the call returned."""
    FAILED = "failed"
    """``sync_mode``: delivery failed (``error`` says why; ``on_error`` was called too)."""
    DISCARDED = "discarded"
    """``send=False``: validated and stamped, then intentionally not sent."""
    DROPPED = "dropped"
    """Not accepted; ``reason`` says why.  Counted in ``client.stats.dropped``."""


class DropReason(StrEnum):
    """Why an event was dropped.  Also the keys of ``Stats.dropped``."""

    INVALID = "invalid"
    """Failed validation (missing ids, wrong types)."""
    TOO_LARGE = "too_large"
    """Serialized event exceeds 32 KiB."""
    UNSERIALIZABLE = "unserializable"
    """Could not be encoded as JSON (circular reference, NaN, ...)."""
    QUEUE_FULL = "queue_full"
    """``max_queue_size`` events were already waiting."""
    QUEUE_BYTES = "queue_bytes"
    """Accepting it would exceed ``max_queue_bytes``."""
    SHUTDOWN = "shutdown"
    """The client has been shut down."""
    NOT_CONFIGURED = "not_configured"
    """Module-level API used before ``journeys_sdk.write_key`` was set."""


@final
class EnqueueResult:
    """Result of a recording call.

    Truthy when the event was accepted (queued, delivered, or discarded on
    purpose with ``send=False``), falsy when it was dropped or failed, so
    ``if not client.track(...)`` reads naturally.
    """

    __slots__ = ("status", "message_id", "reason", "error")

    status: Status
    message_id: str | None
    reason: DropReason | None
    error: Exception | None

    def __init__(
        self,
        status: Status,
        message_id: str | None,
        reason: DropReason | None = None,
        error: Exception | None = None,
    ) -> None:
        self.status = status
        self.message_id = message_id
        self.reason = reason
        self.error = error

    @property
    def queued(self) -> bool:
        return self.status is Status.QUEUED

    @property
    def dropped(self) -> bool:
        return self.status is Status.DROPPED

    @property
    def ok(self) -> bool:
        return self.status is not Status.DROPPED and self.status is not Status.FAILED

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        extra = f", reason={self.reason.value!r}" if self.reason is not None else ""
        if self.error is not None:
            extra += f", error={self.error!r}"
        return f"EnqueueResult({self.status.value!r}, message_id={self.message_id!r}{extra})"


@final
class FlushResult:
    """What ``flush()``, ``aflush()`` and ``shutdown()`` found.

    Truthy only when every event it covers was delivered: acknowledged by the
    collector (a 2xx) and none of them quarantined, nothing still pending, and
    no recording call dropped an event since the previous flush.  So
    ``if client.flush():`` means "everything I recorded got there".

    It covers the events recorded since the previous flush returned, plus those
    that were still pending then (a flush that timed out leaves them to the
    next one).  A failure is therefore reported by the flush that sees it, and
    a later flush, after the collector is back or the key is fixed, is truthy
    again.  Concurrent flushes each cover everything not yet reported.

    ``queued == delivered + failed + pending``; ``quarantined`` is part of
    ``delivered``.  ``settled`` (nothing left pending) is what ``flush()``
    returned as ``True`` before 0.2: "delivered or definitively failed".

    Compares equal to ``True``/``False`` by its truth value, so code written
    for the old ``bool`` (``flush() == True``) keeps working; ``flush() is
    True`` does not.
    """

    __slots__ = ("queued", "delivered", "quarantined", "failed", "pending", "dropped", "last_error")

    queued: int
    """Events this result covers (accepted by recording calls)."""
    delivered: int
    """Of those, acknowledged by the collector with a 2xx (includes ``quarantined``)."""
    quarantined: int
    """Delivered, but kept aside by the collector as invalid (``QuarantinedError`` went to ``on_error``)."""
    failed: int
    """Given up: refused (e.g. 401 for a wrong key), retry budget exhausted, dropped on the
    background thread (too large, not encodable), or the shutdown deadline passed."""
    pending: int
    """Not finished when the flush returned: the timeout passed, or (``overflow_dir``) they are
    parked on disk until the collector is back.  A later flush reports what became of them."""
    dropped: int
    """Events refused by recording calls (invalid, queue full, after shutdown) since the previous
    flush; they were never queued (their ``EnqueueResult`` was falsy)."""
    last_error: Exception | None
    """The latest error among these events: the one that failed or quarantined them or, while
    some are pending, the last failed attempt to deliver them (``None`` if there was none)."""

    def __init__(
        self,
        queued: int = 0,
        delivered: int = 0,
        quarantined: int = 0,
        failed: int = 0,
        pending: int = 0,
        dropped: int = 0,
        last_error: Exception | None = None,
    ) -> None:
        self.queued = queued
        self.delivered = delivered
        self.quarantined = quarantined
        self.failed = failed
        self.pending = pending
        self.dropped = dropped
        self.last_error = last_error

    @property
    def ok(self) -> bool:
        """Everything delivered and taken in (the truth value)."""
        return not (self.failed or self.pending or self.quarantined or self.dropped)

    @property
    def settled(self) -> bool:
        """Nothing left pending: every event was delivered or definitively failed."""
        return self.pending == 0

    def __bool__(self) -> bool:
        return self.ok

    def __eq__(self, other: object) -> bool:
        if isinstance(other, bool):
            return self.ok is other
        if isinstance(other, FlushResult):
            return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        error = f", last_error={self.last_error!r}" if self.last_error is not None else ""
        return (
            f"FlushResult(ok={self.ok}, queued={self.queued}, delivered={self.delivered}, "
            f"quarantined={self.quarantined}, failed={self.failed}, pending={self.pending}, "
            f"dropped={self.dropped}{error})"
        )
