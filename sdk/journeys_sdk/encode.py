"""Turning queued events into wire bytes, and estimating their size cheaply.

Serializing an event costs several microseconds, more than the whole budget of a
``track()`` call.  So the hot path only *estimates* the size (``estimate_size``,
a lower bound of the JSON length that stops counting once it passes the limit)
and the consumer thread does the exact work here: build the event dict (timestamp
text, ``context.library``), encode it once, and enforce the 32 KiB limit on the
real byte count.  The encoded bytes are kept, so a retried batch resends exactly
the same events (same ``messageId``s) without re-encoding them.

Queued events are *tuples*, not dicts (see ``Entry``).  A tuple holding only
strings, numbers and other such tuples is untracked by the cyclic garbage
collector after its first young-generation pass, while a dict holding a dict is
tracked for as long as it lives.  With 100 000 events backed up during an
outage, that is the difference between every full collection (which pauses
every thread, including callers of ``track()``) taking ~4 ms or ~27 ms here.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from .version import VERSION

__all__ = [
    "MAX_EVENT_BYTES",
    "MAX_BODY_BYTES",
    "ENVELOPE_BYTES",
    "LIBRARY",
    "estimate_size",
    "format_timestamp",
    "Entry",
    "Fields",
    "build_event",
    "encode_event",
    "batch_body",
    "body_overhead",
]

MAX_EVENT_BYTES = 32 * 1024
"""Collector limit per serialized event."""
MAX_BODY_BYTES = 500 * 1024
"""Collector limit per request body, before compression."""

LIBRARY = {"name": "journeys-sdk", "version": VERSION}

# Smallest possible wire form of the fields every event gets (type, messageId,
# timestamp, context.library, braces).  Keeps estimates a lower bound.
ENVELOPE_BYTES = 150

_UTC = _dt.timezone.utc


def estimate_size(obj: object, limit: int = MAX_EVENT_BYTES, _depth: int = 0) -> int:
    """Lower bound of ``obj``'s JSON size, cut short once it exceeds ``limit``.

    Being a lower bound matters: an event rejected here must really be too big.
    Events the estimate lets through are measured exactly by the consumer.  The
    early exit bounds the cost for huge payloads, and the depth guard keeps a
    self-referencing dict from recursing forever on the caller's thread.
    """
    t = type(obj)
    if t is str:
        return len(obj) + 2  # type: ignore[arg-type]
    if t is dict:
        if _depth > 32:
            return 2
        n = 2
        for k, v in obj.items():  # type: ignore[attr-defined]
            n += (len(k) if type(k) is str else 1) + 3
            tv = type(v)
            if tv is str:
                n += len(v) + 2
            elif tv is dict or tv is list or tv is tuple:
                n += estimate_size(v, limit - n, _depth + 1)
            else:
                n += 1
            if n > limit:
                return n
        return n
    if t is list or t is tuple:
        if _depth > 32:
            return 2
        n = 2
        for v in obj:  # type: ignore[attr-defined]
            n += estimate_size(v, limit - n, _depth + 1) + 1
            if n > limit:
                return n
        return n
    if t is bytes or t is bytearray:
        return len(obj) + 2  # type: ignore[arg-type]
    if isinstance(obj, str):
        return len(obj) + 2
    return 1


def format_timestamp(ts: object) -> str:
    """ISO-8601 with an explicit offset, millisecond precision (as Segment sends).

    Accepts what the hot path stored: a float from ``time.time()``, or whatever
    the caller passed (aware/naive ``datetime``, epoch seconds, or a string sent
    as-is).  Naive datetimes are taken as local time, like ``datetime.astimezone()``.
    """
    if type(ts) is float or type(ts) is int:
        return _dt.datetime.fromtimestamp(ts, _UTC).isoformat(timespec="milliseconds")
    if isinstance(ts, _dt.datetime):
        if ts.tzinfo is None or ts.tzinfo.utcoffset(ts) is None:
            ts = ts.astimezone()
        return ts.isoformat(timespec="milliseconds")
    if isinstance(ts, str):
        return ts
    raise TypeError(f"unsupported timestamp type {type(ts).__name__}")


def _default(o: Any) -> Any:
    """Encode the values people commonly put in properties, like Segment does."""
    if isinstance(o, _dt.datetime):
        return format_timestamp(o)
    if isinstance(o, (_dt.date, _dt.time)):
        return o.isoformat()
    if isinstance(o, decimal.Decimal):
        # float() would silently round money amounts.
        return str(o)
    if isinstance(o, uuid.UUID):
        return str(o)
    if isinstance(o, enum.Enum):
        return o.value
    if isinstance(o, (set, frozenset)):
        return list(o)
    if isinstance(o, (bytes, bytearray)):
        return bytes(o).decode("utf-8", "replace")
    if isinstance(o, Mapping):
        return dict(o)
    if isinstance(o, Sequence):
        return list(o)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    return str(o)


# One encoder instance: json.dumps() with non-default options builds a new
# encoder on every call.  allow_nan=False because NaN/Infinity are not JSON and
# the collector would reject the whole batch.
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_default)


Fields = tuple[Any, ...]
"""Top-level keys of an event, flattened: ``("event", "Signed Up", "properties", 2, "plan", "pro", "seats", 5)``."""

Entry = tuple[Any, ...]
"""A queued event: ``(type, messageId, timestamp, userId, anonymousId, *fields)``.

``fields`` alternates keys and values, except that a mapping-valued key
(``properties``, ``traits``, ``context``, ``integrations``) is followed by its
number of pairs and then the pairs themselves, inline.  One flat tuple of
atoms is untracked by the garbage collector on its first pass; any nesting
would keep it tracked for another pass per level.
"""

_MAPPINGS = frozenset(("properties", "traits", "context", "integrations"))


def build_event(entry: Entry) -> dict[str, Any]:
    """The wire form of a queued event, as a dict (also what ``on_error`` receives)."""
    kind, message_id, ts, user_id, anonymous_id = entry[:5]
    msg: dict[str, Any] = {"type": kind, "messageId": message_id, "timestamp": format_timestamp(ts)}
    if user_id is not None:
        msg["userId"] = user_id
    if anonymous_id is not None:
        msg["anonymousId"] = anonymous_id
    ctx: dict[str, Any] = {}
    i, end = 5, len(entry)
    while i < end:
        key = entry[i]
        if key in _MAPPINGS:
            stop = i + 2 + 2 * entry[i + 1]
            value: Any = dict(zip(entry[i + 2 : stop : 2], entry[i + 3 : stop : 2]))
            i = stop
        else:
            value = entry[i + 1]
            i += 2
        if key == "context":
            ctx = value
        else:
            msg[key] = value
    ctx["library"] = LIBRARY
    msg["context"] = ctx
    return msg


def encode_event(msg: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON of a built event.

    Raises ``ValueError``/``TypeError``/``RecursionError`` when the event cannot
    be encoded; the consumer turns that into a ``SerializationError``.
    """
    return _encoder.encode(msg).encode("utf-8")


_BODY_HEAD = b'{"batch":['
_BODY_MID = b'],"sentAt":"'
_BODY_TAIL = b'"}'


def body_overhead() -> int:
    """Bytes a request body adds around its events (with a generous sentAt)."""
    return len(_BODY_HEAD) + len(_BODY_MID) + 40 + len(_BODY_TAIL)


def batch_body(events: Sequence[bytes], sent_at: str) -> bytes:
    """The request body, assembled from already-encoded events.

    ``sentAt`` is stamped per attempt (the collector uses it to correct client
    clock skew), which is why bodies are rebuilt rather than cached.
    """
    return b"".join((_BODY_HEAD, b",".join(events), _BODY_MID, sent_at.encode("ascii"), _BODY_TAIL))
