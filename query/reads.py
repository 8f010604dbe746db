"""Read queries over the events table. Every user-supplied value is a bound parameter.

Duplicates (an SDK retry after a lost response, a spool replay after a crash) are removed here with
``LIMIT 1 BY message_id``, never left to background merges: reads are exact at any moment.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson

from journeys.clickhouse import ClickHouse

_EVENT_FIELDS = (
    "message_id",
    "type",
    "event",
    "channel",
    "touchpoint",
    "sentiment",
    "user_id",
    "anonymous_id",
    "group_id",
    "previous_id",
    "timestamp",
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
_JSON_FIELDS = {"properties", "traits", "context"}

CUSTOMER_EVENTS_SQL = f"""
SELECT {", ".join(_EVENT_FIELDS)}
FROM events
WHERE project_id = {{project_id:String}} AND distinct_id IN {{ids:Array(String)}}
ORDER BY timestamp, received_at, message_id
LIMIT 1 BY message_id
LIMIT {{limit:UInt32}}
"""

TRAITS_SQL = """
SELECT trait, argMax(value, updated_at)
FROM customer_traits
WHERE project_id = {project_id:String} AND distinct_id IN {ids:Array(String)}
GROUP BY trait
ORDER BY trait
"""

FIRST_TOUCH_SQL = """
SELECT count(), min(first_seen), argMinMerge(first_channel), argMinMerge(first_utm_source),
       argMinMerge(first_utm_medium), argMinMerge(first_utm_campaign)
FROM first_touch
WHERE project_id = {project_id:String} AND distinct_id IN {ids:Array(String)}
"""


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _event(columns: list[str], row: tuple) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in zip(columns, row):
        if name in _JSON_FIELDS:
            out[name] = orjson.loads(value) if value else {}
        elif isinstance(value, datetime):
            out[name] = _iso(value)
        else:
            out[name] = value
    return out


async def customer_events(ch: ClickHouse, project_id: str, ids: list[str], limit: int) -> list[dict[str, Any]]:
    """A stitched customer's events (all its ids) in time order, each message once."""
    columns, rows = await ch.query(CUSTOMER_EVENTS_SQL, {"project_id": project_id, "ids": ids, "limit": limit})
    return [_event(columns, row) for row in rows]


async def customer_facts(ch: ClickHouse, project_id: str, ids: list[str]) -> dict[str, Any]:
    """Latest traits (newest identify wins per trait, across all the customer's ids) and first touch."""
    params = {"project_id": project_id, "ids": ids}
    _, trait_rows = await ch.query(TRAITS_SQL, params)
    _, [touch] = await ch.query(FIRST_TOUCH_SQL, params)
    seen, first_seen, channel, source, medium, campaign = touch
    return {
        "traits": {trait: orjson.loads(value) for trait, value in trait_rows},
        "first_touch": None
        if not seen
        else {
            "first_seen": _iso(first_seen),
            "first_channel": channel,
            "first_utm_source": source,
            "first_utm_medium": medium,
            "first_utm_campaign": campaign,
        },
    }


STATS_SQL = """
SELECT uniqExact(message_id), uniqExact(distinct_id), max(received_at), max(timestamp)
FROM events
WHERE project_id = {project_id:String}
"""
QUARANTINE_COUNT_SQL = "SELECT count() FROM quarantine WHERE project_id = {project_id:String}"


async def project_stats(ch: ClickHouse, project_id: str) -> dict[str, Any]:
    """Totals for a project, each event once: how much is stored and how fresh the newest is."""
    params = {"project_id": project_id}
    _, rows = await ch.query(STATS_SQL, params)
    events, customers, newest_received, newest_event = rows[0]
    _, qrows = await ch.query(QUARANTINE_COUNT_SQL, params)
    has_events = events > 0
    return {
        "events": events,
        "customers": customers,
        "quarantined": qrows[0][0],
        "newest_received_at": _iso(newest_received) if has_events else None,
        "newest_event_at": _iso(newest_event) if has_events else None,
    }
