"""Turn one ingest request body into stored rows, quarantined rows, or a clear refusal.

Two levels of failure, on purpose:

* the *request* is bad (not gzip it claims to be, too big, not JSON, no ``batch`` list, no event valid at
  all): :class:`journeys.http.ApiError` → 4xx naming each problem (its ``code`` also labels
  ``journeys_events_rejected_total``), and nothing from it is stored;
* an *event* is bad inside a request that has good events: that event goes to the quarantine table with
  the reason and its raw JSON, the good ones are accepted, and the response lists which were quarantined.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from journeys.http import ApiError
from journeys.events import (
    CHANNEL_INDEX,
    EventProblem,
    identity_link,
    parse_time_ms,
    to_row,
    validate_batch,
    without_absent,
)


#: Deepest nesting orjson serializes (see process_events).
MAX_NESTING = 254
_CUT = "(nested too deep: cut here)"


def inflater_for(content_encoding: str) -> Any:
    """A zlib decompressor for ``Content-Encoding`` (``None`` for identity); 415 for any other encoding."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(zlib.MAX_WBITS if encoding == "deflate" else 16 + zlib.MAX_WBITS)
    raise ApiError(
        415,
        [{"field": "Content-Encoding", "reason": "supported encodings: gzip, deflate, identity"}],
        code="bad_encoding",
    )


def decode_body(raw: bytes, content_encoding: str, max_bytes: int) -> bytes:
    """Undo ``Content-Encoding`` with the decompressed size capped — a 1 KB gzip bomb stays 1 KB of work."""
    decompressor = inflater_for(content_encoding)
    if decompressor is None:
        body = raw
    else:
        encoding = content_encoding.strip().lower()
        try:
            body = decompressor.decompress(raw, max_bytes + 1)
        except zlib.error as exc:
            raise ApiError(400, [{"field": "body", "reason": f"invalid {encoding} data: {exc}"}], code="bad_encoding")
        if len(body) > max_bytes or decompressor.unconsumed_tail:
            raise _too_large(max_bytes)
        if not decompressor.eof:
            raise ApiError(400, [{"field": "body", "reason": f"truncated {encoding} data"}], code="bad_encoding")
    if len(body) > max_bytes:
        raise _too_large(max_bytes)
    return body


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413,
        [{"field": "body", "reason": f"request body over the {max_bytes}-byte limit (decompressed)"}],
        code="too_large",
    )


def parse_json(body: bytes) -> Any:
    if not body:
        raise ApiError(400, [{"field": "body", "reason": "empty body; expected a JSON object"}], code="invalid_json")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, [{"field": "body", "reason": f"invalid JSON: {exc}"}], code="invalid_json") from None


def events_of(document: Any, route_type: str | None) -> tuple[list[Any], dict[str, Any]]:
    """The events a request carries, and the batch-level fields they inherit (``sentAt`` as epoch ms,
    ``context``).

    ``route_type`` is the type a single-event endpoint implies (``/v1/track`` → ``track``); ``None`` for batch.
    """
    if not isinstance(document, dict):
        raise ApiError(400, [{"field": "body", "reason": "must be a JSON object"}], code="invalid_body")
    if route_type is not None:
        # writeKey is a credential: it must never reach storage (quarantine keeps raw events).
        event = {k: v for k, v in document.items() if k != "writeKey"}
        event["type"] = route_type
        return [event], {}
    batch = document.get("batch")
    if not isinstance(batch, list):
        raise ApiError(400, [{"field": "batch", "reason": "required: a list of events"}], code="invalid_body")
    if not batch:
        raise ApiError(400, [{"field": "batch", "reason": "must not be empty"}], code="invalid_body")
    inherited = {k: document[k] for k in ("sentAt", "context") if document.get(k) not in (None, "")}
    if "sentAt" in inherited:
        # Parsed once here, not per event: every event of the batch shares it.
        try:
            inherited["sentAt"] = parse_time_ms(inherited["sentAt"], "sentAt")
        except EventProblem as problem:
            raise ApiError(400, problem.errors, code="invalid_body") from None
    return batch, inherited


@dataclass
class Outcome:
    lines: list[bytes] = field(default_factory=list)  # JSONCompactEachRow, one per accepted event
    channels: dict[str, int] = field(default_factory=dict)
    quarantine_lines: list[bytes] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)  # for the response
    links: list[bytes] = field(default_factory=list)  # identity links, for collector.identity


def process_events(
    events: list[Any],
    inherited: dict[str, Any],
    *,
    project_id: str,
    received_ms: int,
    request_id: str,
    max_event_bytes: int,
    max_future_ms: int,
) -> Outcome:
    """Validate and flatten every event; collect the failures for quarantine instead of stopping.

    An event's size is the length of its stored row as JSON: its properties, traits and context plus a
    few hundred bytes of fields, so within a few percent of what the sender serialized.
    """
    out = Outcome()
    originals = events  # quarantine keeps what was sent
    events = [without_absent(event) for event in events]
    failures = validate_batch(events)
    batch_context = inherited.get("context") if isinstance(inherited.get("context"), dict) else None
    batch_sent_ms = inherited.get("sentAt")
    for index, event in enumerate(events):
        errors = failures.get(index)
        if errors is None:
            if batch_context:
                own = event.get("context")
                event = {**event, "context": {**batch_context, **own} if isinstance(own, dict) else batch_context}
            try:
                row = to_row(event, project_id, received_ms, max_future_ms, batch_sent_ms)
                try:
                    line = orjson.dumps(row)
                except orjson.JSONEncodeError:
                    # orjson writes at most 254 levels of nesting (its parser reads 1024): such an event
                    # cannot be stored, so it is quarantined like any other bad event, never a 500.
                    raise EventProblem(
                        [{"field": "(event)", "reason": f"nested deeper than {MAX_NESTING} levels"}]
                    ) from None
                if len(line) > max_event_bytes:
                    raise EventProblem(
                        [
                            {
                                "field": "(event)",
                                "reason": f"{len(line)} bytes, over the {max_event_bytes}-byte event limit",
                            }
                        ]
                    )
            except EventProblem as problem:
                errors = problem.errors
            else:
                out.lines.append(line)
                link = identity_link(row)
                if link is not None:
                    encoded = orjson.dumps([project_id, *link])
                    if not out.links or out.links[-1] != encoded:  # a visitor's events repeat the same link
                        out.links.append(encoded)
                channel = row[CHANNEL_INDEX]
                out.channels[channel] = out.channels.get(channel, 0) + 1
                continue
        original = _as_sent(originals[index], batch_context, batch_sent_ms)
        message_id = original.get("messageId") if isinstance(original, dict) else None
        out.quarantined.append({"index": index, "errors": errors})
        out.quarantine_lines.append(
            orjson.dumps(
                [
                    project_id,
                    received_ms / 1000,
                    request_id,
                    index,
                    message_id if isinstance(message_id, str) else "",
                    orjson.dumps(errors).decode(),
                    _raw_json(original),
                ]
            )
        )
    return out


def _as_sent(event: Any, batch_context: dict[str, Any] | None, batch_sent_ms: int | None) -> Any:
    """A quarantined event with what it inherited from its batch (``sentAt``, ``context``), so a replay
    (collector/quarantine.py) corrects its clock and reads its context as the first delivery would have."""
    if not isinstance(event, dict) or (batch_context is None and batch_sent_ms is None):
        return event
    out = dict(event)
    if batch_sent_ms is not None and out.get("sentAt") in (None, ""):
        try:
            out["sentAt"] = datetime.fromtimestamp(batch_sent_ms / 1000, timezone.utc).isoformat(
                timespec="milliseconds"
            )
        except (ValueError, OverflowError, OSError):  # a sentAt no datetime can hold: refused by to_row anyway
            pass
    if batch_context:
        own = out.get("context")
        out["context"] = {**batch_context, **own} if isinstance(own, dict) else batch_context
    return out


def _raw_json(original: Any) -> str:
    """A quarantined event's JSON text; one nested deeper than orjson writes keeps its first levels."""
    try:
        return orjson.dumps(original).decode()
    except orjson.JSONEncodeError:
        return orjson.dumps(_cut_below(original, 64)).decode()


def _cut_below(value: Any, depth: int) -> Any:
    """A copy of ``value`` with whatever lies ``depth`` levels down replaced by a marker. Iterative, as the
    input may be nested a thousand levels deep, past Python's recursion limit."""
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, int]] = [(value, root, 0, 0)]  # (source, parent, key in parent, level)
    while stack:
        source, parent, key, level = stack.pop()
        if isinstance(source, dict):
            copy: Any = {} if level < depth else _CUT
        elif isinstance(source, list):
            copy = [None] * len(source) if level < depth else _CUT
        else:
            copy = source
        parent[key] = copy
        if isinstance(copy, dict):
            stack.extend((v, copy, k, level + 1) for k, v in source.items())
        elif isinstance(copy, list):
            stack.extend((v, copy, i, level + 1) for i, v in enumerate(source))
    return root[0]
