"""Per-key rate limits: a token bucket per write key, and per public key *and client address*.

Why the two differ: a write key is a server's secret, so its traffic is one sender and one bucket fits.
A public key is shared by every visitor of a site: one bucket for it would let a single abuser (the key is
in the page for anyone to copy) throttle the whole site's tracking, and a busy site would trip it by
itself. So a public key gets one bucket per client address, with a much smaller rate — what one browser
(or one office behind a NAT) sends.

The buckets live in this process: N collectors behind a load balancer admit N times the rate in total
(docs/tracker.md). The table of buckets is an LRU bounded by ``JOURNEYS_RATE_LIMIT_MAX_BUCKETS``: evicting
the least recently used bucket only forgets an idle sender, and a bucket that was refilled anyway is
the same as a new one.

Over the limit: 429 with ``Retry-After`` (whole seconds until the bucket holds a token again) and the usual
JSON error body; ``journeys_rate_limited_total{kind}`` counts the refusals.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from journeys.config import Settings
from journeys.http import ApiError
from journeys.keys import Principal
from journeys.metrics import Metrics

MAX_ADDRESS_CHARS = 64


@dataclass(frozen=True)
class Limit:
    rate: float  # tokens (requests) per second; 0 = unlimited
    burst: int  # bucket size: requests that may come at once after a quiet spell


class Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float):
        self.tokens = tokens
        self.stamp = stamp


class BucketTable:
    """Token buckets by key, least recently used evicted beyond ``max_buckets``."""

    def __init__(self, max_buckets: int, clock: Callable[[], float] = time.monotonic):
        self._buckets: OrderedDict[object, Bucket] = OrderedDict()
        self._max = max_buckets
        self._clock = clock

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: object, limit: Limit) -> float:
        """Take one token from ``key``'s bucket: 0.0 if there was one, else the seconds until there is."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(float(limit.burst), now)
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(float(limit.burst), bucket.tokens + (now - bucket.stamp) * limit.rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / limit.rate


def retry_after_seconds(wait: float) -> int:
    """HTTP's Retry-After is whole seconds: round up, and never 0 (that would invite an immediate retry)."""
    return max(1, math.ceil(wait))


class RateLimiter:
    """Admits or refuses one ingest request for its key (see the module docstring)."""

    def __init__(self, settings: Settings, metrics: Metrics, clock: Callable[[], float] = time.monotonic):
        self._limits = {
            "write": Limit(settings.rate_limit_write_per_s, settings.rate_limit_write_burst),
            "public": Limit(settings.rate_limit_public_per_s, settings.rate_limit_public_burst),
        }
        self._client_header = settings.client_address_header
        self._metrics = metrics
        self.buckets = BucketTable(settings.rate_limit_max_buckets, clock)

    def admit(self, request: web.Request, principal: Principal, secret: str) -> None:
        """Return if the request may proceed; raise 429 (ApiError) if its bucket is empty."""
        limit = self._limits.get(principal.kind)
        if limit is None or limit.rate <= 0:
            return
        # The key's hash, not the key: the table outlives requests and should hold no secrets.
        digest = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()
        # A public key has a bucket per client: keyed by a 64-bit hash of the pair, a fifth of the memory
        # of the pair itself (collisions among 100 000 buckets: ~1e-9).
        key: object = digest if principal.kind != "public" else hash((digest, self.client_address(request)))
        wait = self.buckets.take(key, limit)
        if wait <= 0:
            return
        self._metrics.rate_limited.labels(principal.kind).inc()
        seconds = retry_after_seconds(wait)
        per = "key" if principal.kind != "public" else "public key and client address"
        raise ApiError(
            429,
            [
                {
                    "field": "Authorization",
                    "reason": f"rate limit of {limit.rate:g} requests/s (bursts of {limit.burst}) per {per} "
                    f"exceeded; retry after {seconds} s",
                }
            ],
            {"Retry-After": str(seconds)},
        )

    def client_address(self, request: web.Request) -> str:
        """The sender's address: the peer, or behind a proxy the *last* entry of the configured header
        (the one the nearest proxy appended; earlier entries come from the client and can be forged)."""
        if self._client_header:
            values = request.headers.getall(self._client_header, [])
            last = ",".join(values).rsplit(",", 1)[-1].strip()
            if last:
                return last[:MAX_ADDRESS_CHARS]
        return request.remote or ""
