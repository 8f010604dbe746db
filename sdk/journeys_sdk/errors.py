"""Exception hierarchy.

The SDK never raises into the code that records events (``track()`` and
friends report problems through their return value, ``client.stats`` and the
``on_error`` callback).  These classes exist so that those reports are precise
and can be matched with ``isinstance``:

``JourneysError``
    ``ConfigurationError``   bad ``Client(...)`` options (the one place we raise)
    ``InvalidEventError``    an event was rejected before it was queued/sent
        ``EventTooLargeError``
        ``SerializationError``
    ``DeliveryError``        a batch did not reach the collector
        ``NetworkError``         refused / reset / timeout / dropped mid-response
        ``APIError``             the collector answered with a non-2xx status
        ``RetryBudgetExceeded``  retryable failures went on past the retry budget
        ``ShutdownError``        the client was shut down before delivery finished
    ``QuarantinedError``     delivered, but the collector quarantined some events
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "JourneysError",
    "ConfigurationError",
    "InvalidEventError",
    "EventTooLargeError",
    "SerializationError",
    "DeliveryError",
    "NetworkError",
    "APIError",
    "RetryBudgetExceeded",
    "ShutdownError",
    "QuarantinedError",
    "is_retryable_status",
]


def is_retryable_status(status: int) -> bool:
    """Whether resending the same batch can succeed.

    408/429 and most 5xx are transient.  501 (not implemented) and 505 (HTTP
    version not supported) will answer the same way forever, so retrying them
    only burns the budget.
    """
    if status in (408, 429):
        return True
    return 500 <= status <= 599 and status not in (501, 505)


def _describe(error: Any) -> str:
    """The collector's errors are ``{"field", "reason"}`` (plus ``index``) objects; say them plainly."""
    if isinstance(error, dict) and "reason" in error:
        where = ".".join(str(error[k]) for k in ("index", "field") if k in error)
        return f"{where}: {error['reason']}" if where else str(error["reason"])
    return str(error)


class JourneysError(Exception):
    """Base class of everything this SDK reports."""


class ConfigurationError(JourneysError, ValueError):
    """A ``Client`` option is invalid; raised by the constructor only."""


class InvalidEventError(JourneysError, ValueError):
    """An event was rejected on our side and will never be sent."""


class EventTooLargeError(InvalidEventError):
    """The serialized event exceeds the collector's per-event limit (32 KiB)."""

    def __init__(self, size: int, limit: int, *, estimated: bool = False) -> None:
        at_least = "at least " if estimated else ""
        super().__init__(f"event is {at_least}{size} bytes serialized; the limit is {limit} bytes")
        self.size = size
        self.limit = limit
        self.estimated = estimated


class SerializationError(InvalidEventError):
    """The event could not be encoded as JSON (e.g. a circular reference or NaN)."""


class DeliveryError(JourneysError):
    """A batch was not delivered.  ``retryable`` says whether resending could help."""

    retryable: bool = False


class NetworkError(DeliveryError):
    """The request failed below HTTP: refused, reset, timed out, or cut off mid-response."""

    retryable = True


class APIError(DeliveryError):
    """The collector answered with a non-2xx status.

    ``errors`` is the collector's ``{"errors": [...]}`` list when it sent one, so
    an ``on_error`` handler can log *why* a batch was refused.
    """

    def __init__(
        self,
        status: int,
        errors: Sequence[Any] = (),
        *,
        retry_after: float | None = None,
        body: str = "",
    ) -> None:
        detail = "; ".join(_describe(e) for e in errors[:5]) if errors else body[:200]
        if len(errors) > 5:
            detail += f"; ... ({len(errors)} errors)"
        super().__init__(f"collector answered HTTP {status}" + (f": {detail}" if detail else ""))
        self.status = status
        self.errors = list(errors)
        self.retry_after = retry_after
        self.body = body
        self.retryable = is_retryable_status(status)


class RetryBudgetExceeded(DeliveryError):
    """Retryable failures continued until the time budget (or ``max_retries``) ran out."""

    def __init__(self, last_error: DeliveryError, attempts: int, elapsed: float) -> None:
        super().__init__(f"gave up after {attempts} attempts over {elapsed:.1f}s; last error: {last_error}")
        self.last_error = last_error
        self.attempts = attempts
        self.elapsed = elapsed


class ShutdownError(DeliveryError):
    """``shutdown()`` (or the atexit hook) ran out of time before these events were delivered."""


class QuarantinedError(JourneysError):
    """The collector stored the batch but quarantined some events as invalid.

    They are kept server-side for inspection, so resending would not help;
    ``items`` pairs each quarantined event's index in the batch with the
    collector's reasons.
    """

    def __init__(self, items: Sequence[tuple[int, Sequence[Any]]]) -> None:
        super().__init__(f"collector quarantined {len(items)} event(s)")
        self.items = [(i, list(errs)) for i, errs in items]
