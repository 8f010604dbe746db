"""The event schema: Segment-spec payloads in, one flat touchpoint row out.

Validation is pydantic (one discriminated union on ``type``), then :func:`to_row` flattens a valid event
into the tuple the ``events`` table stores, in :data:`EVENT_COLUMNS` order. Touchpoint fields
(``channel``, ``touchpoint``, ``sentiment``) are first-class columns; Segment-style senders may put them in
``properties`` or ``context`` instead, and we look there too.

Timestamps are kept as epoch milliseconds ints from here on: the spool stores them as plain JSON numbers
and clickhouse-connect writes ints into ``DateTime64(3)`` as raw ticks, so nothing re-parses dates.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union
from urllib.parse import parse_qs, urlsplit

import orjson
from pydantic_core import PydanticCustomError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

EVENT_TYPES = ("track", "identify", "page", "screen", "group", "alias")

#: Column order of a stored row; ``to_row`` and the ``events`` table DDL agree on it.
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
    "page_url",
    "referrer",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "properties",
    "traits",
    "context",
)

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

SENTIMENTS = ("positive", "neutral", "negative")
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
_IGNORED_CONTEXT_CHANNELS = {"server"}
_DEFAULT_TOUCHPOINT = {"page": "page_view", "screen": "screen_view"}

MAX_ID_CHARS = 255
MAX_NAME_CHARS = 255


def _id_string(value: Any) -> Any:
    # Segment allows numeric ids; store them as their decimal text so lookups by either form match.
    if isinstance(value, bool):
        return value  # let the str validator reject it
    if isinstance(value, int):
        return str(value)
    return value


Id = Annotated[str, BeforeValidator(_id_string), Field(min_length=1, max_length=MAX_ID_CHARS)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
JsonObject = dict[str, Any]


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    messageId: Annotated[str, BeforeValidator(_id_string), Field(min_length=1, max_length=MAX_ID_CHARS)] | None = None
    userId: Id | None = None
    anonymousId: Id | None = None
    timestamp: datetime | None = None
    originalTimestamp: datetime | None = None
    sentAt: datetime | None = None
    context: JsonObject | None = None
    properties: JsonObject | None = None
    channel: str | None = Field(default=None, max_length=64)
    touchpoint: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    sentiment: str | None = Field(default=None, max_length=16)

    @model_validator(mode="after")
    def _someone(self) -> "_Event":
        if self.userId is None and self.anonymousId is None:
            raise PydanticCustomError("identity_missing", "userId or anonymousId is required")
        return self


class TrackEvent(_Event):
    type: Literal["track"]
    event: Name


class IdentifyEvent(_Event):
    type: Literal["identify"]
    traits: JsonObject | None = None


class PageEvent(_Event):
    type: Literal["page"]
    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    category: str | None = Field(default=None, max_length=MAX_NAME_CHARS)


class ScreenEvent(_Event):
    type: Literal["screen"]
    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    category: str | None = Field(default=None, max_length=MAX_NAME_CHARS)


class GroupEvent(_Event):
    type: Literal["group"]
    groupId: Id
    traits: JsonObject | None = None


class AliasEvent(_Event):
    type: Literal["alias"]
    previousId: Id
    userId: Id  # type: ignore[assignment]  # required for alias, optional elsewhere


AnyEvent = Annotated[
    Union[TrackEvent, IdentifyEvent, PageEvent, ScreenEvent, GroupEvent, AliasEvent], Field(discriminator="type")
]
_EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnyEvent)


class EventProblem(Exception):
    """An event that cannot be stored as a touchpoint; ``errors`` are ``{"field", "reason"}`` dicts."""

    def __init__(self, errors: list[dict[str, str]]):
        super().__init__("; ".join(f"{e['field']}: {e['reason']}" for e in errors))
        self.errors = errors


def _field_path(loc: tuple[Any, ...]) -> str:
    # The discriminated union puts the tag first ("track", "event"); users only know their own field names.
    parts = list(loc)
    if parts and parts[0] in EVENT_TYPES:
        parts = parts[1:]
    return ".".join(str(p) for p in parts) or "(event)"


def validate_event(payload: Any) -> TrackEvent | IdentifyEvent | PageEvent | ScreenEvent | GroupEvent | AliasEvent:
    """Validate one Segment event; raise :class:`EventProblem` naming every bad field."""
    if not isinstance(payload, dict):
        raise EventProblem([{"field": "(event)", "reason": f"must be a JSON object, not {type(payload).__name__}"}])
    try:
        return _EVENT_ADAPTER.validate_python(payload)
    except ValidationError as exc:
        errors = []
        for err in exc.errors(include_url=False):
            reason = err["msg"]
            if err["type"] == "union_tag_invalid":
                reason = f"must be one of {', '.join(EVENT_TYPES)}"
            elif err["type"] == "union_tag_not_found":
                reason = "is required"
            if err["type"] in ("union_tag_not_found", "union_tag_invalid"):
                field = "type"
            elif err["type"] == "identity_missing":
                field = "userId"
            else:
                field = _field_path(err["loc"])
            errors.append({"field": field, "reason": reason})
        raise EventProblem(errors) from None


def _ms(value: datetime) -> int:
    if value.tzinfo is None:  # ISO strings without an offset are UTC, as Segment treats them
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp() * 1000)


def _slug(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    slug = value.strip().lower().replace("-", "_").replace(" ", "_")
    return slug or None


def _channel(ev: _Event, props: JsonObject, ctx: JsonObject) -> str:
    explicit = ev.channel if ev.channel is not None else props.get("channel")
    if explicit is not None:
        slug = _slug(explicit)
        slug = _CHANNEL_ALIASES.get(slug, slug) if slug else slug
        if not slug or not _SLUG.match(slug):
            raise EventProblem(
                [{"field": "channel", "reason": "must be a short name of letters, digits and _ (e.g. web, store)"}]
            )
        return slug
    implicit = _slug(ctx.get("channel"))
    if implicit and implicit not in _IGNORED_CONTEXT_CHANNELS:
        implicit = _CHANNEL_ALIASES.get(implicit, implicit)
        if _SLUG.match(implicit):
            return implicit
    if ev.type == "page":  # type: ignore[attr-defined]
        return "web"
    if ev.type == "screen":  # type: ignore[attr-defined]
        return "app"
    return "unknown"


def _touchpoint(ev: _Event, props: JsonObject) -> str:
    for candidate in (ev.touchpoint, props.get("touchpoint"), props.get("action")):
        if isinstance(candidate, str) and candidate.strip():
            return candidate.strip()[:MAX_NAME_CHARS]
    kind: str = ev.type  # type: ignore[attr-defined]
    if kind == "track":
        return ev.event  # type: ignore[attr-defined]
    return _DEFAULT_TOUCHPOINT.get(kind, kind)


def _sentiment(ev: _Event, props: JsonObject) -> str:
    value = ev.sentiment if ev.sentiment is not None else props.get("sentiment")
    if value is None or value == "":
        return ""
    if isinstance(value, str) and value.strip().lower() in SENTIMENTS:
        return value.strip().lower()
    raise EventProblem([{"field": "sentiment", "reason": f"must be one of {', '.join(SENTIMENTS)}"}])


def _text(value: Any, limit: int = 2048) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _web_fields(props: JsonObject, ctx: JsonObject) -> tuple[str, str, str, str, str, str, str]:
    page = ctx.get("page") if isinstance(ctx.get("page"), dict) else {}
    url = _text(props.get("url")) or _text(page.get("url"))
    referrer = _text(props.get("referrer")) or _text(page.get("referrer"))
    campaign = ctx.get("campaign") if isinstance(ctx.get("campaign"), dict) else {}
    utm = {k: _text(campaign.get(k), 255) for k in ("source", "medium", "name", "term", "content")}
    if url and not all(utm.values()) and "utm_" in url:
        query = parse_qs(urlsplit(url).query)
        for key in utm:
            if not utm[key]:
                param = "utm_campaign" if key == "name" else f"utm_{key}"
                utm[key] = query.get(param, [""])[0][:255]
    return url, referrer, utm["source"], utm["medium"], utm["name"], utm["term"], utm["content"]


def _json_text(value: JsonObject | None) -> str:
    return orjson.dumps(value).decode() if value else "{}"


def to_row(ev: Any, project_id: str, received_at_ms: int, max_future_ms: int) -> tuple[Any, ...]:
    """Flatten a validated event into a stored row (EVENT_COLUMNS order).

    The stored ``timestamp`` is corrected for the sender's clock skew the way Segment does it:
    ``received_at - (sentAt - timestamp)``, so a device whose clock is an hour off still lands in order.
    """
    props = ev.properties or {}
    ctx = ev.context or {}
    kind = ev.type
    client_ts = ev.timestamp or ev.originalTimestamp
    original_ms = _ms(client_ts) if client_ts is not None else received_at_ms
    sent_ms = _ms(ev.sentAt) if ev.sentAt is not None else None
    timestamp_ms = received_at_ms - (sent_ms - original_ms) if (sent_ms is not None and client_ts) else original_ms
    if timestamp_ms < MIN_TIMESTAMP_MS or timestamp_ms > received_at_ms + max_future_ms:
        raise EventProblem([{"field": "timestamp", "reason": "out of range (before 2000 or too far in the future)"}])
    channel = _channel(ev, props, ctx)
    touchpoint = _touchpoint(ev, props)
    sentiment = _sentiment(ev, props)
    user_id = ev.userId or ""
    anonymous_id = ev.anonymousId or ""
    name = ev.event if kind == "track" else (getattr(ev, "name", None) or "")
    traits = getattr(ev, "traits", None)
    if traits is None and kind == "identify":
        traits = ctx.get("traits") if isinstance(ctx.get("traits"), dict) else None
    return (
        project_id,
        ev.messageId or str(uuid.uuid4()),
        kind,
        name,
        channel,
        touchpoint,
        sentiment,
        user_id or anonymous_id,
        user_id,
        anonymous_id,
        getattr(ev, "groupId", None) or "",
        getattr(ev, "previousId", None) or "",
        timestamp_ms,
        original_ms,
        sent_ms,
        received_at_ms,
        *_web_fields(props, ctx),
        _json_text(props),
        _json_text(traits),
        _json_text(ctx),
    )
