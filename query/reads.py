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
WHERE project_id = {{project_id:String}} AND distinct_id = {{customer_id:String}}
ORDER BY timestamp, received_at, message_id
LIMIT 1 BY message_id
LIMIT {{limit:UInt32}}
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


async def customer_events(ch: ClickHouse, project_id: str, customer_id: str, limit: int) -> list[dict[str, Any]]:
    """One customer's events in time order, each message once."""
    columns, rows = await ch.query(
        CUSTOMER_EVENTS_SQL, {"project_id": project_id, "customer_id": customer_id, "limit": limit}
    )
    return [_event(columns, row) for row in rows]


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
