"""What an enqueue call (``track()``, ``identify()``, ...) tells its caller.

Recording methods never raise and never block, so the only way to learn that an
event was *not* accepted is the returned value.  It is deliberately cheap: one
small slotted object per call, no copy of the event.
"""

from __future__ import annotations

from enum import StrEnum
from typing import final

__all__ = ["DropReason", "EnqueueResult", "Status"]


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
