"""The event schema: Segment-spec payloads in, one flat touchpoint row out.

Validation is pydantic: a discriminated union (on ``type``) of TypedDicts, applied to a whole batch in one
call. TypedDicts rather than models, and one call per batch rather than per event, because this is the
ingest hot path: that shape costs about 0.5 µs per event against 4–5 µs for per-event model instances
(measured, see bench/README.md). Validation only *checks*; the events' own dicts are used afterwards, so
nothing is rebuilt. A batch with errors is rare and is re-examined per event to say which events failed.

:func:`to_row` then flattens a valid event into a list in :data:`EVENT_COLUMNS` order. Touchpoint fields
(``channel``, ``touchpoint``, ``sentiment``) are first-class columns; Segment-style senders may put them in
``properties`` or ``context`` instead, and we look there too. URL, referrer and UTM columns are derived by
ClickHouse from the stored properties/context (see the events DDL), not here. Times are float seconds with millisecond
precision and ``properties``/``traits``/``context`` stay dicts: a row is serialized once, as a
JSONCompactEachRow line, and ClickHouse parses it (objects into String columns as their JSON text).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, StrictInt, StringConstraints, TypeAdapter, ValidationError
from typing_extensions import NotRequired, Required, TypedDict

from journeys.errors import JourneysError

EVENT_TYPES = ("track", "identify", "page", "screen", "group", "alias")

#: Columns of a row as the collector inserts it (``to_row`` order). The events table derives the rest —
#: page_url, referrer, utm_* — from properties/context itself (DEFAULT expressions in its DDL).
EVENT_COLUMNS: tuple[str, ...] = (
    "project_id",
    "message_id",
    "type",
    "event",
    "channel",
    "touchpoint",
    "sentiment",
    "distinct_id",
    "user_id",
    "anonymous_id",
    "group_id",
    "previous_id",
    "timestamp",
    "original_timestamp",
    "sent_at",
    "received_at",
    "properties",
    "traits",
    "context",
)
CHANNEL_INDEX = EVENT_COLUMNS.index("channel")
_TYPE, _USER, _ANON, _PREVIOUS = (EVENT_COLUMNS.index(c) for c in ("type", "user_id", "anonymous_id", "previous_id"))


def identity_link(row: list[Any]) -> tuple[str, str, str] | None:
    """What a row says about identity, if anything: ``("alias", previous_id, user_id)`` for an alias, or
    ``("identify", anonymous_id, user_id)`` for any event that carries both ids (Segment sends the
    anonymous id on every call after identify). See collector/identity.py for what is done with it."""
    if row[_TYPE] == "alias":
        return ("alias", row[_PREVIOUS], row[_USER])
    if row[_USER] and row[_ANON] and row[_USER] != row[_ANON]:
        return ("identify", row[_ANON], row[_USER])
    return None


QUARANTINE_COLUMNS: tuple[str, ...] = (
    "project_id",
    "received_at",
    "request_id",
    "batch_index",
    "message_id",
    "reason",
    "raw",
)

# Events before this are certainly bad clocks or bad units (seconds sent as ms and vice versa); they would
# also explode the monthly partitions.
MIN_TIMESTAMP_MS = int(datetime(2000, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)
# The range of ClickHouse's DateTime64: a device clock may be far off (its sentAt corrects that), but a
# sentAt or client timestamp outside this range cannot be stored faithfully and reads would choke on it.
MIN_STORABLE_MS = int(datetime(1900, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)
MAX_STORABLE_MS = int(datetime(2299, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp() * 1000)

SENTIMENTS = frozenset({"positive", "neutral", "negative"})
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_]{0,31}$")
# Segment libraries fill context.channel with where the *library* runs; map what means a channel for us
# and ignore "server", which says nothing about the customer's touchpoint.
_CHANNEL_ALIASES = {
    "browser": "web",
    "website": "web",
    "mobile": "app",
    "call_center": "call_centre",
    "callcenter": "call_centre",
    "callcentre": "call_centre",
    "contact_centre": "call_centre",
    "contact_center": "call_centre",
    "phone": "call_centre",
    "pos": "store",
    "retail": "store",
    "e_mail": "email",
    "mail": "email",
}
_IGNORED_CONTEXT_CHANNELS = frozenset({"server", "sources"})
# RudderStack's SDKs put the *sending platform* in a top-level "channel" (its spec: server, web, mobile,
# sources), where our own SDK and tracker put the touchpoint channel. "server" and "sources" never name a
# touchpoint: from anyone, they say nothing. "web" and "mobile" are read as the platform only from
# RudderStack's SDKs (context.library.name: "RudderLabs JavaScript SDK", rudder-ios-library, …): there a
# touchpoint channel in properties or context comes first; from our own senders they stay the touchpoint's.
_PLATFORM_CHANNELS = frozenset({"server", "web", "mobile", "sources"})


def _from_rudderstack(ctx: dict[str, Any]) -> bool:
    library = ctx.get("library")
    name = library.get("name") if isinstance(library, dict) else None
    return isinstance(name, str) and "rudder" in name.lower()


_DEFAULT_CHANNEL = {"page": "web", "screen": "app"}
_DEFAULT_TOUCHPOINT = {"page": "page_view", "screen": "screen_view"}

MAX_ID_CHARS = 255
MAX_NAME_CHARS = 255

Id = Union[Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)], StrictInt]
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_CHARS)]
OptionalName = Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS)]
Text = Annotated[str, StringConstraints(max_length=64)]


class _Common(TypedDict, total=False):
    messageId: Id
    userId: Id
    anonymousId: Id
    timestamp: str
    originalTimestamp: str
    sentAt: str
    # Objects are checked in to_row with isinstance: letting pydantic validate dict[str, Any] would copy
    # every nested dict on the hot path.
    context: Any
    properties: Any
    integrations: Any
    channel: Text
    touchpoint: OptionalName
    sentiment: Text


class TrackEvent(_Common):
    type: Required[Literal["track"]]
    event: Required[Name]


class IdentifyEvent(_Common):
    type: Required[Literal["identify"]]
    traits: NotRequired[Any]


class _Viewed(_Common):
    name: NotRequired[OptionalName]
    category: NotRequired[OptionalName]


class PageEvent(_Viewed):
    type: Required[Literal["page"]]


class ScreenEvent(_Viewed):
    type: Required[Literal["screen"]]


class GroupEvent(_Common):
    type: Required[Literal["group"]]
    groupId: Required[Id]
    traits: NotRequired[Any]


class AliasEvent(_Common):
    type: Required[Literal["alias"]]
    previousId: Required[Id]
    userId: Required[Id]  # type: ignore[misc]  # required for alias, optional elsewhere


AnyEvent = Annotated[
    Union[TrackEvent, IdentifyEvent, PageEvent, ScreenEvent, GroupEvent, AliasEvent], Discriminator("type")
]
_BATCH = TypeAdapter(list[AnyEvent])


class EventProblem(JourneysError):
    """An event that cannot be stored as a touchpoint; ``errors`` are ``{"field", "reason"}`` dicts."""

    def __init__(self, errors: list[dict[str, str]]):
        super().__init__("; ".join(f"{e['field']}: {e['reason']}" for e in errors))
        self.errors = errors


def _problem(field: str, reason: str) -> EventProblem:
    return EventProblem([{"field": field, "reason": reason}])


# How pydantic names the members of a union in an error's location (``Id`` = constrained str | int):
# validator internals, never a field the sender wrote.
_UNION_MEMBERS = frozenset({"str", "int", "constrained-str", "constrained-int"})


def _error_for_user(err: Any) -> tuple[int, dict[str, str]]:
    """A pydantic error on a batch → (event index, {"field", "reason"}) in the sender's own field names."""
    loc = list(err["loc"])
    index = loc.pop(0)
    if loc and loc[0] in EVENT_TYPES:  # the discriminated union puts the tag first
        loc.pop(0)
    kind = err["type"]
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        return index, {"field": "type", "reason": f"must be one of {', '.join(EVENT_TYPES)}"}
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return index, {"field": "(event)", "reason": "must be a JSON object"}
    reason = err["msg"]
    if len(loc) == 2 and loc[1] in _UNION_MEMBERS:
        del loc[1]  # Id = str | int: report the field once, not per union member
        reason = "must be a string (or an integer id) of 1-255 characters"
    field = ".".join(str(part) for part in loc) or "(event)"
    return index, {"field": field, "reason": reason}


# Fields whose empty text is an error worth naming rather than an absent value.
_EMPTY_IS_AN_ERROR = frozenset({"type", "event"})


def without_absent(event: Any) -> Any:
    """The event with ``null`` and ``""`` optional fields dropped: absent, as the senders mean them.

    Segment's and RudderStack's libraries send ``"userId": null`` before identify (``""`` in RudderStack's
    browser SDK), ``"name": null`` for an unnamed page, ``"context": {"page": null}``…; refusing those would
    quarantine most of what they send. ``type`` and ``event`` are kept so that a missing name still gets
    its own error. The common event has neither, and costs two scans of its values.
    """
    if not isinstance(event, dict):
        return event
    values = event.values()
    if None in values or "" in values:
        event = {k: v for k, v in event.items() if k in _EMPTY_IS_AN_ERROR or (v is not None and v != "")}
    context = event.get("context")
    if isinstance(context, dict) and None in context.values():
        event = {**event, "context": {k: v for k, v in context.items() if v is not None}}
    return event


def validate_batch(events: list[Any]) -> dict[int, list[dict[str, str]]]:
    """Check every event's shape in one pydantic call; return ``{index: errors}`` for the failing ones."""
    try:
        _BATCH.validate_python(events)
        return {}
    except ValidationError as exc:
        problems: dict[int, list[dict[str, str]]] = {}
        for err in exc.errors(include_url=False):
            index, problem = _error_for_user(err)
            found = problems.setdefault(index, [])
            if problem not in found:
                found.append(problem)
        return problems


def parse_time_ms(value: Any, field: str) -> int:
    """ISO-8601 text → epoch milliseconds (naive means UTC, as Segment treats it)."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except (ValueError, AttributeError):
        raise _problem(field, "must be an ISO-8601 date-time, e.g. 2026-03-01T09:30:00.000Z") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp() * 1000)


_SLUGS: dict[str, str | None] = {}  # raw channel text → valid slug or None; senders repeat a handful of values


def _slug(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    known = _SLUGS.get(value, False)
    if known is not False:
        return known  # type: ignore[return-value]
    slug = value.strip().lower().replace("-", "_").replace(" ", "_")
    slug = _CHANNEL_ALIASES.get(slug, slug)
    result = slug if slug and _SLUG.match(slug) else None
    if len(_SLUGS) > 10_000:  # bounded: a sender inventing channels cannot grow it without limit
        _SLUGS.clear()
    _SLUGS[value] = result
    return result


def _channel(event: dict[str, Any], props: dict[str, Any], ctx: dict[str, Any], kind: str) -> str:
    """The touchpoint channel: given (top level, then properties), else where the sender runs (context's
    channel, RudderStack's top-level platform), else what the event kind implies."""
    explicit = event.get("channel")
    platform = None
    if explicit.__class__ is str:
        word = explicit.strip().lower()
        if word in _IGNORED_CONTEXT_CHANNELS or (word in _PLATFORM_CHANNELS and _from_rudderstack(ctx)):
            platform, explicit = explicit, None
    if explicit is None:
        explicit = props.get("channel")
    if explicit is not None:
        slug = _slug(explicit)
        if slug is None:
            raise _problem("channel", "must be a short name of letters, digits and _ (e.g. web, store)")
        return slug
    for implied in (_slug(ctx.get("channel")), _slug(platform)):
        if implied is not None and implied not in _IGNORED_CONTEXT_CHANNELS:
            return implied
    if kind not in _DEFAULT_CHANNEL and isinstance(ctx.get("page"), dict):
        return "web"  # sent from a web page (browser SDKs describe the page in every event's context)
    return _DEFAULT_CHANNEL.get(kind, "unknown")


def _touchpoint(event: dict[str, Any], props: dict[str, Any], kind: str) -> str:
    for candidate in (event.get("touchpoint"), props.get("touchpoint"), props.get("action")):
        if isinstance(candidate, str) and candidate.strip():
            return candidate.strip()[:MAX_NAME_CHARS]
    if kind == "track":
        return event["event"]
    return _DEFAULT_TOUCHPOINT.get(kind, kind)


def _sentiment(event: dict[str, Any], props: dict[str, Any]) -> str:
    value = event.get("sentiment")
    if value is None:
        value = props.get("sentiment")
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = value.strip().lower()
        if value in SENTIMENTS:
            return value
    raise _problem("sentiment", "must be one of positive, neutral, negative")


def _object(event: dict[str, Any], field: str) -> dict[str, Any]:
    value = event.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _problem(field, "must be a JSON object")
    return value


def _id(value: Any) -> str:
    # Segment allows numeric ids; store their decimal text so lookups by either form match.
    return value if isinstance(value, str) else ("" if value is None else str(value))


def to_row(
    event: dict[str, Any],
    project_id: str,
    received_ms: int,
    max_future_ms: int,
    batch_sent_ms: int | None = None,
) -> list[Any]:
    """Flatten a validated event into a stored row (EVENT_COLUMNS order).

    The stored ``timestamp`` is corrected for the sender's clock skew the way Segment does it:
    ``received_at - (sentAt - timestamp)``, so a device whose clock is an hour off still lands in order.
    """
    kind = event["type"]
    props = _object(event, "properties")
    ctx = _object(event, "context")
    traits = _object(event, "traits") if kind in ("identify", "group") else {}
    if not traits and kind == "identify" and isinstance(ctx.get("traits"), dict):
        traits = ctx["traits"]
    user_id = event.get("userId", "")
    user_id = user_id if user_id.__class__ is str else _id(user_id)
    anonymous_id = event.get("anonymousId", "")
    anonymous_id = anonymous_id if anonymous_id.__class__ is str else _id(anonymous_id)
    if not user_id and not anonymous_id:
        raise _problem("userId", "userId or anonymousId is required")

    client_ts = event.get("timestamp") or event.get("originalTimestamp")
    original_ms = parse_time_ms(client_ts, "timestamp") if client_ts else received_ms
    sent = event.get("sentAt")
    sent_ms = parse_time_ms(sent, "sentAt") if sent else batch_sent_ms
    if not MIN_STORABLE_MS <= original_ms <= MAX_STORABLE_MS:
        raise _problem("timestamp", "out of range (before 1900 or after 2299)")
    if sent_ms is not None and not MIN_STORABLE_MS <= sent_ms <= MAX_STORABLE_MS:
        raise _problem("sentAt", "out of range (before 1900 or after 2299)")
    timestamp_ms = received_ms - (sent_ms - original_ms) if (sent_ms is not None and client_ts) else original_ms
    if timestamp_ms < MIN_TIMESTAMP_MS or timestamp_ms > received_ms + max_future_ms:
        raise _problem("timestamp", "out of range (before 2000 or too far in the future)")

    name = event["event"] if kind == "track" else (event.get("name") or "")
    message_id = event.get("messageId")
    # The common case inline (this runs for every event); the helpers handle the rest.
    given = event.get("channel")
    if given is None:
        given = props.get("channel")
    channel = _SLUGS.get(given, False) if given.__class__ is str and given not in _PLATFORM_CHANNELS else False
    if channel in _PLATFORM_CHANNELS:
        channel = False  # maybe RudderStack's platform: _channel decides
    if channel is None:
        raise _problem("channel", "must be a short name of letters, digits and _ (e.g. web, store)")
    if channel is False:
        channel = _channel(event, props, ctx, kind)
    return [
        project_id,
        message_id if message_id.__class__ is str else (_id(message_id) or str(uuid.uuid4())),
        kind,
        name,
        channel,
        _touchpoint(event, props, kind),
        _sentiment(event, props) if ("sentiment" in event or "sentiment" in props) else "",
        user_id or anonymous_id,
        user_id,
        anonymous_id,
        _id(event.get("groupId")) if kind == "group" else "",
        _id(event.get("previousId")) if kind == "alias" else "",
        timestamp_ms / 1000,
        original_ms / 1000,
        None if sent_ms is None else sent_ms / 1000,
        received_ms / 1000,
        props,
        traits,
        ctx,
    ]
