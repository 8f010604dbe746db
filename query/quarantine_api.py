"""``GET /v1/quarantine`` (admin key): what validation kept aside for a project, by kind of problem.

Each kind is the field and reason of an event's first error (numbers in the reason read as ``N``), with how
many events (each message once: a resent bad event counts once; see :mod:`journeys.quarantine`), when it
was first and last seen, and up to three samples — the newest distinct events, with their raw JSON, errors,
request id and receive time. Admin only: samples are raw customer data. ``since`` (ISO date-time) narrows to
what was quarantined from then on; ``limit`` caps the kinds listed (most events first). docs/quarantine.md.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from aiohttp import web

from journeys.http import ApiError, json_response
from journeys.quarantine import DISTINCT_EVENTS_SQL, FIELD_SQL, REASON_SQL, SinceError, parse_since
from query.appkeys import STORES
from query.auth import principal_of
from query.reads import iso

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
SAMPLES = 3

_WINDOW = "project_id = {project_id:String} AND received_at >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')"

TOTAL_SQL = f"SELECT {DISTINCT_EVENTS_SQL} FROM quarantine WHERE {_WINDOW}"

KINDS_SQL = f"""
SELECT {FIELD_SQL} AS q_field, {REASON_SQL} AS q_reason, {DISTINCT_EVENTS_SQL} AS events,
       toUnixTimestamp64Milli(min(received_at)), toUnixTimestamp64Milli(max(received_at))
FROM quarantine
WHERE {_WINDOW}
GROUP BY q_field, q_reason
ORDER BY events DESC, q_field, q_reason
LIMIT {{limit:UInt32}} + 1
"""

# Which rows are the samples: per kind the newest copy of the newest distinct events. Only their keys: the
# raw JSON (up to the event size limit each) is read for those rows alone (SAMPLES_SQL).
SAMPLE_KEYS_SQL = f"""
SELECT q_field, q_reason, toUnixTimestamp64Milli(received_at), request_id, batch_index
FROM
(
    SELECT {FIELD_SQL} AS q_field, {REASON_SQL} AS q_reason, received_at, request_id, batch_index, message_id
    FROM quarantine
    WHERE {_WINDOW}
    ORDER BY received_at DESC, request_id, batch_index
    LIMIT 1 BY q_field, q_reason, message_id, if(message_id = '', request_id, ''), if(message_id = '', batch_index, 0),
               if(message_id = '', received_at, toDateTime64(0, 3, 'UTC'))
)
ORDER BY received_at DESC, request_id, batch_index
LIMIT {SAMPLES} BY q_field, q_reason
"""

SAMPLES_SQL = f"""
SELECT toUnixTimestamp64Milli(received_at), request_id, batch_index, message_id, reason, raw
FROM quarantine
WHERE {_WINDOW}
  AND concat(request_id, ':', toString(batch_index), ':', toString(toUnixTimestamp64Milli(received_at))) IN {{keys:Array(String)}}
LIMIT 1 BY received_at, request_id, batch_index
"""


routes = web.RouteTableDef()


@routes.get("/v1/quarantine")
async def quarantine(request: web.Request) -> web.Response:
    principal = await principal_of(request, ("read", "admin"))
    if principal.kind != "admin":
        # Samples are raw events (customer data, sometimes secrets sent by mistake): admins only.
        raise ApiError(
            403,
            [
                {
                    "field": "Authorization",
                    "reason": f"a {principal.kind} key cannot list quarantined events (admin key)",
                }
            ],
        )
    since_ms, limit = _params(request)
    listing = await quarantined(request.app[STORES].clickhouse, principal.project_id, since_ms, limit)
    return json_response(listing)


def _params(request: web.Request) -> tuple[int, int]:
    since_ms = 0
    raw_since = request.query.get("since")
    if raw_since is not None:
        try:
            since_ms = parse_since(raw_since)
        except SinceError as exc:
            raise ApiError(400, [{"field": "since", "reason": str(exc)}]) from None
    limit = DEFAULT_LIMIT
    raw_limit = request.query.get("limit")
    if raw_limit is not None:
        text = raw_limit.strip()
        limit = int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else 0
        if not 1 <= limit <= MAX_LIMIT:
            raise ApiError(
                400,
                [{"field": "limit", "reason": f"must be an integer from 1 to {MAX_LIMIT} (kinds of problem listed)"}],
            )
    return since_ms, limit


def _at(ms: int) -> str:
    return iso(datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms))


def _json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


async def quarantined(ch: Any, project_id: str, since_ms: int = 0, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    params = {"project_id": project_id, "since_ms": since_ms, "limit": limit}
    _, total = await ch.query(TOTAL_SQL, params)
    _, kinds = await ch.query(KINDS_SQL, params)
    truncated = len(kinds) > limit
    kinds = kinds[:limit]
    listed = {(f, r) for f, r, *_ in kinds}
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {kind: [] for kind in listed}
    if kinds:
        _, keys = await ch.query(SAMPLE_KEYS_SQL, params)
        order: dict[str, tuple[tuple[str, str], int]] = {}  # row key → (kind, position among the kind's samples)
        for f, r, at_ms, request_id, batch_index in keys:
            if (f, r) in listed:
                order[f"{request_id}:{batch_index}:{at_ms}"] = ((f, r), len(order))
        if order:
            _, rows = await ch.query(SAMPLES_SQL, {**params, "keys": list(order)})
            found = {}
            for at_ms, request_id, batch_index, message_id, reason, raw in rows:
                key = f"{request_id}:{batch_index}:{at_ms}"
                found[key] = {
                    "message_id": message_id,
                    "request_id": request_id,
                    "batch_index": batch_index,
                    "received_at": _at(at_ms),
                    "errors": _json(reason),
                    "raw": _json(raw),
                }
            for row_key, (kind, _) in sorted(order.items(), key=lambda item: item[1][1]):
                if row_key in found:
                    samples[kind].append(found[row_key])
    return {
        "since": _at(since_ms) if since_ms else None,
        "quarantined": int(total[0][0]),
        "reasons": [
            {
                "field": f,
                "reason": r,
                "count": int(events),
                "first_seen": _at(first_ms),
                "last_seen": _at(last_ms),
                "samples": samples[(f, r)],
            }
            for f, r, events, first_ms, last_ms in kinds
        ],
        "truncated": truncated,
    }
