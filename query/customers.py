"""A customer as one person: their ids, traits, first touch, segments — finding them (by id prefix, or the
most recently active), and forgetting them entirely."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

from journeys import identities
from query import definitions
from journeys.clickhouse import ClickHouse, table_on_cluster
from query.maps import segment_matches, validate_segment
from journeys.errors import JourneysError
from query.reads import customer_facts
from query.facts.writer import forget_facts

# Per table: which column holds the ids to forget. Lightweight DELETE: rows vanish from reads at once,
# the disk space goes with the next merge. On a cluster it runs on the local tables of every node.
_FORGET = (
    ("events", "distinct_id"),
    ("timelines", "distinct_id"),
    ("customer_traits", "distinct_id"),
    ("first_touch", "distinct_id"),
    ("identities", "distinct_id"),
    ("identities_by_customer", "distinct_id"),
    ("identities_by_customer", "customer_id"),
)


# A customer exists while any of their ids has an event stored (a forgotten customer has none).
KNOWN_SQL = "SELECT 1 FROM events WHERE project_id = {project_id:String} AND distinct_id IN {ids:Array(String)} LIMIT 1"

# Ids with events, by prefix: the events' key starts (project_id, distinct_id), so this is a key-range read.
PREFIX_SQL = """
SELECT distinct_id FROM events
WHERE project_id = {project_id:String} AND startsWith(distinct_id, {prefix:String})
GROUP BY distinct_id
ORDER BY distinct_id
LIMIT {limit:UInt32}
"""

# Ids by their latest event time, newest first; ``since`` keeps the read to recent monthly partitions.
RECENT_SQL = """
SELECT distinct_id, max(timestamp) AS last_seen FROM events
WHERE project_id = {project_id:String} AND timestamp >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')
GROUP BY distinct_id
ORDER BY last_seen DESC, distinct_id
LIMIT {limit:UInt32}
"""
RECENT_DAYS = 30
IDS_PER_CUSTOMER = 4  # ids read per customer wanted: several ids of one customer count once


class NoSuchCustomer(JourneysError):
    """No id of the customer has an event stored (never seen, or forgotten)."""


async def known(ch: ClickHouse, project_id: str, ids: list[str]) -> bool:
    _, rows = await ch.query(KNOWN_SQL, {"project_id": project_id, "ids": ids})
    return bool(rows)


async def profile(ch: ClickHouse, pg: Any, project_id: str, any_id: str) -> dict[str, Any]:
    """The customer's ids, latest traits, first touch and segments; :class:`NoSuchCustomer` when unknown."""
    customer_id, ids = await identities.resolve(ch, project_id, any_id)
    exists, facts = await asyncio.gather(known(ch, project_id, ids), customer_facts(ch, project_id, ids))
    if not exists:
        raise NoSuchCustomer(any_id)
    segments = [
        version.name
        for version in await definitions.latest_of_each(pg, project_id, "segment")
        if segment_matches(validate_segment(version.body), facts)
    ]
    return {"customer_id": customer_id, "ids": ids, **facts, "segments": segments}


async def forget(ch: ClickHouse, pg: Any, cluster: str, project_id: str, any_id: str) -> dict[str, Any]:
    """Right to be forgotten: every event, trait, first touch and identity link of the customer, and their
    part in the KPIs (their stage facts are withdrawn, not deleted: a pending DELETE would keep KPI reads off
    the pre-aggregated projections until it is done; the withdrawn pairs leave the disk with the next merge)."""
    customer_id, ids = await identities.resolve(ch, project_id, any_id)
    params = {"project_id": project_id, "ids": ids}
    for table, column in _FORGET:
        sql = (
            f"DELETE FROM {table_on_cluster(table, cluster)} "
            f"WHERE project_id = {{project_id:String}} AND {column} IN {{ids:Array(String)}} "
            "SETTINGS lightweight_deletes_sync = 0"  # reads apply it at once (journeys.clickhouse)
        )
        await ch.command(sql, params)
    await forget_facts(ch, pg, project_id, ids)  # after the events: a refresh from now on finds none
    return {"customer_id": customer_id, "forgotten_ids": ids}


async def _found(ch: ClickHouse, project_id: str, ids: list[str]) -> dict[str, list[str]]:
    """The customers these ids belong to now → the ids of theirs among them, in first-seen order."""
    if not ids:
        return {}
    current = await identities.current_customers(ch, project_id, ids)
    out: dict[str, list[str]] = {}
    for i in ids:
        out.setdefault(current[i], []).append(i)
    return out


async def _with_last_touch(ch: ClickHouse, project_id: str, found: dict[str, list[str]]) -> list[dict[str, Any]]:
    from query.kpi_customers import last_touches

    touches = await last_touches(ch, project_id, await identities.members_of(ch, project_id, list(found)))
    return [{"customer_id": c, "matched_ids": ids, "last_touch": touches.get(c)} for c, ids in found.items()]


async def search(ch: ClickHouse, project_id: str, prefix: str, limit: int) -> dict[str, Any]:
    """Customers with an id (any of theirs with events) starting with ``prefix``, by customer id; each with
    the ids that matched and their last touch."""
    _, rows = await ch.query(
        PREFIX_SQL, {"project_id": project_id, "prefix": prefix, "limit": limit * IDS_PER_CUSTOMER + 1}
    )
    ids = [r[0] for r in rows]
    found = await _found(ch, project_id, ids[: limit * IDS_PER_CUSTOMER])
    customers = sorted(found)[:limit]
    truncated = len(found) > limit or len(ids) > limit * IDS_PER_CUSTOMER
    return {
        "customers": await _with_last_touch(ch, project_id, {c: found[c] for c in customers}),
        "truncated": truncated,
    }


async def recent(ch: ClickHouse, project_id: str, limit: int, now: datetime | None = None) -> dict[str, Any]:
    """The most recently active customers (latest event first): those active in the last RECENT_DAYS days,
    or, when fewer than ``limit`` were, over all time."""
    now = now or datetime.now(timezone.utc)
    since = int((now - timedelta(days=RECENT_DAYS)).timestamp() * 1000)
    found: dict[str, list[str]] = {}
    for since_ms in (since, 0):  # 0: all time (events before 2000 are never stored)
        params = {"project_id": project_id, "since_ms": since_ms, "limit": limit * IDS_PER_CUSTOMER}
        _, rows = await ch.query(RECENT_SQL, params)
        found = await _found(ch, project_id, [r[0] for r in rows])
        if len(found) >= limit:
            break
    listed = sorted(await _with_last_touch(ch, project_id, found), key=lambda c: c["customer_id"])
    listed.sort(key=lambda c: c["last_touch"]["at"] if c["last_touch"] else "", reverse=True)  # stable: ties by id
    return {"customers": listed[:limit], "truncated": len(listed) > limit}
