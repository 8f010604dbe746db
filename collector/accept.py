"""The accept step every ingest route takes: authorize → validate → encode → append, each a named function.

Like Plausible's ingest (a request becomes events, the events pass a fixed list of named steps, the last one
writes to the buffer), and for the same reason: one path for every sender, so a rule added to a step holds
for all of them. The routes are ``/v1/batch`` and its Segment/RudderStack siblings and the beacon
(collector/segment.py), email opens and clicks (collector/email.py), ``POST /v1/import`` (collector/imports.py)
and quarantine replay (collector/quarantine.py). The steps:

1. :func:`authorize`: the key may write here (a write or public key, a public one from an origin its project
   lists, within its rate limit). Replay takes an admin key instead, and email links are their own
   credential (a signed token), so those two skip this step.
2. :func:`validate`: each event checked and flattened into one row, or quarantined with why
   (:func:`collector.ingest.process_events`; the limits come from the settings, :class:`Limits`).
3. :func:`encode`: the rows as spool records (the format is :mod:`collector.records`, beside the spool).
4. :func:`append`: the records in the spool; it returns once they are fsync'd. Durable before
   acknowledged: no route says events are accepted before this step has returned (an email open or click
   gets its pixel or redirect regardless, and a loss is counted: collector/email.py).

:func:`prepare` is steps 2 and 3 together (:func:`encode_bounded` is step 3 for a replay's page of events).
They are separate from step 4 because routes differ in what happens between them: ``/v1/batch`` refuses a
request with no valid event before writing anything, an import reads its next chunk from the socket while the
previous one is being fsync'd, replay packs many events into bounded records. What a route answers, and which
metrics it counts, stays in the route.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from collector.appkeys import API_KEYS, RATE_LIMITER
from collector.cors import check_origin
from collector.ingest import Outcome, process_events
from collector.records import encode_records
from collector.spool import Spool
from journeys.config import Settings
from journeys.http import ApiError
from journeys.keys import Principal
from journeys.metrics import Metrics

WRITE_KINDS = frozenset({"write", "public"})


async def authorize(request: web.Request, key: str | None) -> Principal:
    """The key's principal, once it may write here: a write or public key, a public one from an origin its
    project lists (collector/cors.py), within its rate limit (collector/ratelimit.py, 429 otherwise)."""
    app = request.app
    if not key:
        raise ApiError(
            401,
            [{"field": "Authorization", "reason": "write key required: HTTP Basic username or writeKey"}],
            code="unauthorized",
        )
    principal = await app[API_KEYS].resolve(key)
    if principal is None:
        raise ApiError(401, [{"field": "Authorization", "reason": "unknown or revoked key"}], code="unauthorized")
    if principal.kind not in WRITE_KINDS:
        raise ApiError(
            403, [{"field": "Authorization", "reason": f"a {principal.kind} key cannot write events"}], code="forbidden"
        )
    await check_origin(request, principal)
    app[RATE_LIMITER].admit(request, principal, key)
    return principal


@dataclass(frozen=True)
class Limits:
    """What an event may be, from the settings: its stored size, and how far ahead of our clock it may be."""

    max_event_bytes: int
    max_future_ms: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(settings.max_event_bytes, int(settings.max_clock_skew_future_s * 1000))


def validate(
    events: list[Any],
    inherited: dict[str, Any],
    *,
    project_id: str,
    received_ms: int,
    request_id: str,
    limits: Limits,
) -> Outcome:
    """Step 2: every event validated and flattened into a row, or quarantined with its errors."""
    return process_events(
        events,
        inherited,
        project_id=project_id,
        received_ms=received_ms,
        request_id=request_id,
        max_event_bytes=limits.max_event_bytes,
        max_future_ms=limits.max_future_ms,
    )


def encode(outcome: Outcome, *, quarantine: bool = True) -> list[bytes]:
    """Step 3: the spool records of one delivery: its rows, its quarantined events (unless ``quarantine`` is
    false: an import reports bad lines instead of keeping them) and its identity links."""
    return encode_records(outcome.lines, outcome.quarantine_lines if quarantine else (), outcome.links)


def encode_bounded(lines: Sequence[bytes], links: Sequence[bytes], record_bytes: int) -> Iterator[list[bytes]]:
    """Step 3 for many events at once (a replay's page): spool payloads of at most about ``record_bytes``
    each, events first, then their identity links, with the last payload: a link is resolved once the events
    it came with are in."""
    start = size = 0
    for i, line in enumerate(lines):
        size += len(line) + 1
        if size >= record_bytes:
            yield encode_records(lines[start : i + 1], [], [])
            start, size = i + 1, 0
    last = encode_records(lines[start:], [], links)
    if last:
        yield last


@dataclass
class Prepared:
    """One delivery after steps 2 and 3: what became of each event, and the records to append."""

    outcome: Outcome
    records: list[bytes]


def prepare(
    events: list[Any],
    inherited: dict[str, Any],
    *,
    project_id: str,
    received_ms: int,
    request_id: str,
    limits: Limits,
    quarantine: bool = True,
) -> Prepared:
    """Steps 2 and 3: validate, then encode."""
    outcome = validate(
        events, inherited, project_id=project_id, received_ms=received_ms, request_id=request_id, limits=limits
    )
    return Prepared(outcome, encode(outcome, quarantine=quarantine))


async def append(spool: Spool, records: Sequence[bytes], *, wait_s: float | None = None) -> None:
    """Step 4: return once ``records`` are fsync'd, written together; raise
    :class:`~collector.spool.SpoolError` (:class:`~collector.spool.SpoolFull` when over the cap) if not.
    With ``wait_s``, a full spool is waited out that long while the inserter drains it: for batch jobs
    (imports, replays) that would rather slow down than fail."""
    if wait_s is None:
        await spool.append(*records)
    else:
        await spool.append_waiting(list(records), wait_s)


def count_refusal(metrics: Metrics, refused: ApiError, events: int = 1) -> None:
    """Count a refused delivery's ``events`` in ``journeys_events_rejected_total``, by its code. A rate
    limit's 429 is not counted here: ``journeys_rate_limited_total`` counts it (collector/ratelimit.py)."""
    if refused.status != 429:
        metrics.events_rejected.labels(refused.code).inc(events)
