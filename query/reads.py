"""Read queries over the events table, and over its copy laid out for journeys (``timelines``). Every
user-supplied value is a bound parameter.

Duplicates (an SDK retry after a lost response, a spool replay after a crash) are removed here, never left
to background merges: of a message's copies each read keeps the one a merge keeps (received last), so reads
are exact at any moment and no answer changes when ClickHouse merges.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from collections.abc import Callable, Hashable, Iterable, Sequence
from operator import itemgetter
from typing import Any

import orjson

from journeys import identities
from journeys.clickhouse import ClickHouse
from journeys.quarantine import DISTINCT_EVENTS_SQL

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

_BY_IDS = "{ids:Array(String)}"
# The ids that may belong to the customer `id` (identities.CANDIDATES_SQL), read while identities.guess()
# finds out which of them do: see stitched_events().
_GUESSED_IDS = f"({identities.CANDIDATES_SQL})"


def _events_sql(fields: tuple[str, ...], ids: str) -> str:
    # Of a message's copies, the one a merge keeps (ReplacingMergeTree(received_at): received last), so that
    # no answer changes when ClickHouse merges; then time order.
    inner = ", ".join(dict.fromkeys(("distinct_id", *fields, "received_at")))
    return f"""
SELECT distinct_id, {", ".join(fields)}
FROM
(
    SELECT {inner}
    FROM events
    WHERE project_id = {{project_id:String}} AND distinct_id IN {ids}
    ORDER BY message_id, received_at DESC, timestamp
    LIMIT 1 BY message_id
)
ORDER BY timestamp, received_at, message_id
LIMIT {{limit:UInt32}}
"""


# What a journey needs of each event (query.journey.build_journey): the fat columns (context, traits, web
# fields) stay unread, which halves the read of one customer (measured: 9.5 → 5.4 ms p50 in chDB).
_JOURNEY_FIELDS = ("message_id", "type", "event", "channel", "sentiment", "timestamp", "properties")

#: (journey fields only, ids guessed) → the read of those events off the events table.
EVENTS_SQL = {
    (journey, guessed): _events_sql(_JOURNEY_FIELDS if journey else _EVENT_FIELDS, _GUESSED_IDS if guessed else _BY_IDS)
    for journey in (False, True)
    for guessed in (False, True)
}


def _timeline_sql(ids: str) -> str:
    # One row past the limit says "more than a journey holds" (the caller then reads events): a bot's whole
    # timeline is never shipped to be cut in Python.
    return f"""
SELECT distinct_id, entry
FROM timelines
WHERE project_id = {{project_id:String}} AND distinct_id IN {ids}
LIMIT {{limit:UInt32}} + 1
"""


#: ids guessed → the read of the journey fields off the timelines table (migration 0007): about half the
#: time of the same read off events.
TIMELINE_SQL = {guessed: _timeline_sql(_GUESSED_IDS if guessed else _BY_IDS) for guessed in (False, True)}

TRAITS_SQL = """
SELECT distinct_id, trait, argMax(value, updated_at), max(updated_at)
FROM customer_traits
WHERE project_id = {project_id:String} AND distinct_id IN {ids:Array(String)}
GROUP BY distinct_id, trait
"""

FIRST_TOUCH_SQL = """
SELECT distinct_id, min(first_seen), argMinMerge(first_channel), argMinMerge(first_utm_source),
       argMinMerge(first_utm_medium), argMinMerge(first_utm_campaign)
FROM first_touch
WHERE project_id = {project_id:String} AND distinct_id IN {ids:Array(String)}
GROUP BY distinct_id
"""

#: Ids per query when reading many customers at once (journeys.identities.ID_CHUNK: bound-parameter payloads
#: stay well under a server's URI limit).
ID_CHUNK = identities.ID_CHUNK


def iso(value: datetime) -> str:
    """UTC, to the millisecond, with a Z: how every time leaves the query service."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _event(columns: list[str], row: tuple) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in zip(columns, row):
        if name in _JSON_FIELDS:
            out[name] = orjson.loads(value) if value else {}
        elif isinstance(value, datetime):
            out[name] = iso(value)
        else:
            out[name] = value
    return out


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


#: The fields of a ``timelines`` entry, a JSON array (migration 0007), by name.
TIMELINE_ENTRY = ("message_id", "type", "event", "channel", "sentiment", "at_ms", "received_ms", "properties")


def one_copy_each(
    items: Iterable[Sequence[Any]], key: Callable[[Sequence[Any]], Hashable], columns: Sequence[str]
) -> list[Sequence[Any]]:
    """Each message once, in journey order (time, receipt, message id). Of a message's copies (same ``key``)
    the one kept is the one a merge of `events` keeps (ReplacingMergeTree(received_at): received last);
    equal receipts (one request) keep the earlier time. ``columns`` names the items' fields; the ones read
    are ``at_ms`` (the event's time), ``received_ms`` and ``message_id``."""
    # Positions found once by name: the rows stay plain sequences (a journey reads up to 10k of them).
    at, received, message_id = (columns.index(name) for name in ("at_ms", "received_ms", "message_id"))
    kept: dict[Hashable, Sequence[Any]] = {}
    for item in items:
        k = key(item)
        other = kept.get(k)
        if other is None or (item[received], -item[at]) > (other[received], -other[at]):
            kept[k] = item
    return sorted(kept.values(), key=lambda item: (item[at], item[received], item[message_id]))


def timeline_events(rows: list[tuple]) -> list[dict[str, Any]]:
    """Rows of :data:`TIMELINE_SQL` → the events as a journey reads them: in time order, each message once
    (the copy the events reads keep, and a merge of `events` would keep: received last)."""
    if not rows:
        return []
    items = orjson.loads("[" + ",".join(row[1] for row in rows) + "]")
    events = []
    for message_id, type_, event, channel, sentiment, at_ms, _, properties in one_copy_each(
        items, itemgetter(0), TIMELINE_ENTRY
    ):
        events.append(
            {
                "message_id": message_id,
                "type": type_,
                "event": event,
                "channel": channel,
                "sentiment": sentiment,
                "timestamp": iso(_EPOCH + timedelta(milliseconds=at_ms)),
                "properties": properties,
            }
        )
    return events


async def _events(
    ch: ClickHouse, params: dict[str, Any], *, for_journey: bool, guessed: bool
) -> tuple[set[str], list[dict[str, Any]]]:
    """One read of events → (the ids they came from, the events in time order, each message once)."""
    if for_journey:
        _, rows = await ch.query(TIMELINE_SQL[guessed], params)
        if len(rows) <= params["limit"]:
            return {row[0] for row in rows}, timeline_events(rows)
        # More events than a journey holds: the earliest `limit` of them, which only the events table sorts.
    columns, rows = await ch.query(EVENTS_SQL[for_journey, guessed], params)
    return {row[0] for row in rows}, [_event(columns[1:], row[1:]) for row in rows]


async def customer_events(
    ch: ClickHouse, project_id: str, ids: list[str], limit: int, *, for_journey: bool = False
) -> list[dict[str, Any]]:
    """A stitched customer's events (all its ids) in time order, each message once; ``for_journey``
    reads only the fields a journey is built from, off the timelines."""
    params = {"project_id": project_id, "ids": ids, "limit": limit}
    return (await _events(ch, params, for_journey=for_journey, guessed=False))[1]


async def stitched_events(
    ch: ClickHouse, project_id: str, any_id: str, limit: int, *, for_journey: bool = False, _hops: int = 2
) -> tuple[str, list[str], list[dict[str, Any]]]:
    """Any of a customer's ids → (the customer, all its ids, its events as :func:`customer_events` reads them).

    Resolving the id and reading the events are two chDB queries of several ms each, so they run side by
    side on a guess: that ``any_id`` is the customer itself (every id never stitched, and lookups by user
    id). The events of every id that may belong to it are read while :func:`identities.guess` finds out
    which do. When the guess holds and no other id's event came back, that read is the answer. Asked by a
    stitched anonymous id, the guess names the customer, and the same pair of reads runs for it. Otherwise
    (a reverse-index row ahead of its forward row) the events are read again for exactly the members.
    """
    params = {"project_id": project_id, "id": any_id, "limit": limit}
    found, (seen, events) = await asyncio.gather(
        identities.guess(ch, project_id, any_id), _events(ch, params, for_journey=for_journey, guessed=True)
    )
    if found.right and seen <= set(found.members):
        return found.customer, found.members, events
    if not found.right and _hops > 0:
        return await stitched_events(ch, project_id, found.customer, limit, for_journey=for_journey, _hops=_hops - 1)
    ids = found.members if found.right else sorted(await identities.members(ch, project_id, found.customer))
    return found.customer, ids, await customer_events(ch, project_id, ids, limit, for_journey=for_journey)


async def customer_facts(ch: ClickHouse, project_id: str, ids: list[str]) -> dict[str, Any]:
    """Latest traits (newest identify wins per trait, across all the customer's ids) and first touch."""
    return (await facts_of(ch, project_id, {"": ids}))[""]


async def facts_of(ch: ClickHouse, project_id: str, members: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """:func:`customer_facts` for many customers at once (``customer → its ids``).

    Per trait the newest value wins across the customer's ids; the first touch is that of the id seen
    first. Ties are broken by value, then id, so the answer never depends on the order rows come back in.
    """
    owner = {i: customer for customer, ids in members.items() for i in ids}
    all_ids = list(owner)
    folded = CustomerFactsFold(members)
    for start in range(0, len(all_ids), ID_CHUNK):
        params = {"project_id": project_id, "ids": all_ids[start : start + ID_CHUNK]}
        (_, trait_rows), (_, touch_rows) = await asyncio.gather(
            ch.query(TRAITS_SQL, params), ch.query(FIRST_TOUCH_SQL, params)
        )
        folded.add(owner, trait_rows, touch_rows)
    return folded.result()


FIRST_TOUCH_FIELDS = ("first_channel", "first_utm_source", "first_utm_medium", "first_utm_campaign")


class CustomerFactsFold:
    """Per-id trait and first-touch rows → each customer's ``{"traits", "first_touch"}``: per trait the newest
    value across the customer's ids (ties: the larger value), the first touch of the id seen first (ties: the
    smaller id), so the answer never depends on the order rows come back in. One fold for every reader of
    these facts (the profile, and tests/segment_facts.py: the oracle of the stage facts' segment keys)."""

    def __init__(self, members: dict[str, Any]):
        self.members = members
        self.traits: dict[str, dict[str, tuple[Any, str]]] = {c: {} for c in members}
        self.touches: dict[str, tuple[Any, str, tuple[Any, ...]]] = {}

    def add(self, owner: dict[str, str], trait_rows: Any, touch_rows: Any) -> None:
        """``trait_rows``: (id, trait, value JSON, updated_at); ``touch_rows``: (id, first_seen, *FIRST_TOUCH_FIELDS)."""
        for distinct_id, trait, value, updated_at in trait_rows:
            best = self.traits[owner[distinct_id]].get(trait)
            if best is None or (updated_at, value) > best:
                self.traits[owner[distinct_id]][trait] = (updated_at, value)
        for distinct_id, first_seen, *fields in touch_rows:
            customer = owner[distinct_id]
            best_touch = self.touches.get(customer)
            if best_touch is None or (first_seen, distinct_id) < best_touch[:2]:
                self.touches[customer] = (first_seen, distinct_id, tuple(fields))

    def result(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for customer in self.members:
            touch = self.touches.get(customer)
            out[customer] = {
                "traits": {trait: orjson.loads(value) for trait, (_, value) in sorted(self.traits[customer].items())},
                "first_touch": None
                if touch is None
                else {"first_seen": iso(touch[0]), **dict(zip(FIRST_TOUCH_FIELDS, touch[2]))},
            }
        return out


STATS_SQL = """
SELECT uniqExact(message_id), uniqExact(distinct_id), max(received_at), max(timestamp)
FROM events
WHERE project_id = {project_id:String}
"""
# People, not ids: each id with events counts as the customer it is stitched to now (docs/identity.md), so a
# visitor who browsed anonymously and then signed up is one customer with two ids.
PEOPLE_SQL = """
SELECT uniqExact(if(linked.customer != '' AND linked.deleted = 0, linked.customer, seen.distinct_id))
FROM (SELECT DISTINCT distinct_id FROM events WHERE project_id = {project_id:String}) AS seen
LEFT JOIN (
    SELECT distinct_id, argMax(customer_id, version) AS customer, argMax(is_deleted, version) AS deleted
    FROM identities WHERE project_id = {project_id:String} GROUP BY distinct_id
) AS linked ON linked.distinct_id = seen.distinct_id
"""
# Each quarantined event once: the copies of a resent bad event are one (journeys.quarantine).
QUARANTINE_COUNT_SQL = f"SELECT {DISTINCT_EVENTS_SQL} FROM quarantine WHERE project_id = {{project_id:String}}"


async def project_stats(ch: ClickHouse, project_id: str) -> dict[str, Any]:
    """Totals for a project, each event once: how much is stored and how fresh the newest is."""
    params = {"project_id": project_id}
    (_, rows), (_, people), (_, qrows) = await asyncio.gather(
        ch.query(STATS_SQL, params), ch.query(PEOPLE_SQL, params), ch.query(QUARANTINE_COUNT_SQL, params)
    )
    events, ids, newest_received, newest_event = rows[0]
    has_events = events > 0
    return {
        "events": events,
        "customers": people[0][0],
        "ids": ids,
        "quarantined": qrows[0][0],
        "newest_received_at": iso(newest_received) if has_events else None,
        "newest_event_at": iso(newest_event) if has_events else None,
    }
