"""When to try a batch again, and when to stop.

Exponential backoff with *full jitter* (sleep a random time between 0 and the
exponential ceiling): after an outage every SDK instance would otherwise retry
in lock-step and knock the collector straight back over.  A ``Retry-After``
from the collector overrides the computed delay (it knows its own load), but is
capped so a bad header cannot park us for an hour.  The budget is time-based
because what callers care about is how long an event may sit undelivered, not
how many requests that took.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RetryPolicy", "Backoff", "parse_retry_after"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    budget: float = 60.0
    """Seconds from the first attempt after which a batch is given up."""
    base: float = 0.1
    """Ceiling of the first backoff; doubles per retry."""
    cap: float = 10.0
    """Largest computed backoff."""
    retry_after_cap: float = 30.0
    """Largest ``Retry-After`` we honour."""
    max_retries: int | None = None
    """Optional cap on the number of retries, on top of the time budget."""

    def backoff(self, retry_number: int, rand: Callable[[], float] = random.random) -> float:
        """Full-jitter delay before retry number ``retry_number`` (1-based)."""
        ceiling = min(self.cap, self.base * float(2 ** min(retry_number - 1, 62)))
        return ceiling * rand()

    def delay(self, retry_number: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_cap)
        return self.backoff(retry_number)


class Backoff:
    """Retry state of one batch: counts retries and enforces the budget."""

    __slots__ = ("policy", "clock", "started", "retries")

    def __init__(self, policy: RetryPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock
        self.started = clock()
        self.retries = 0

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def next_delay(self, retry_after: float | None = None) -> float | None:
        """Delay before the next retry, or None if the budget does not allow one."""
        policy = self.policy
        if policy.max_retries is not None and self.retries >= policy.max_retries:
            return None
        delay = policy.delay(self.retries + 1, retry_after)
        if self.elapsed + delay > policy.budget:
            return None
        self.retries += 1
        return delay


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - now()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)
