"""From a KPI number to the customers behind it: ``GET /v1/kpis/customers`` and ``GET /v1/kpis/dropped``.

``/v1/kpis/customers`` lists the customers one stage count of ``/v1/kpis`` counts — reached, entered,
converted, dropped or in progress — by exactly the same definitions (docs/kpis.md): it reads the same
``stage_facts`` build the KPIs read, under the same :func:`~query.facts.locks.consistent_facts` lock, with the
same window and the same ``now`` rules (an open entry is dropped iff entered(S) + W <= now, to the ms). The
KPIs sum the facts' projections; this reads the per-customer entry facts, filtered by the same conditions,
so the length of a list equals its count. Each customer comes with when they entered the stage, their
outcome there, their current stage (of their latest transition) and their last touchpoint (the
``touchpoint`` and ``channel`` columns of their latest event, over every stitched id).

``/v1/kpis/dropped`` summarises the customers who dropped at a stage in the window: their most frequent last
touchpoints and channels, and what they did between entering the stage and the end of its conversion window
(every event after entered(S), up to entered(S) + W: the time they had to move on and did not).

Paging is by keyset (entered time, newest first, then customer id) with an opaque cursor that also fixes
``now``, the window and the build of the first page, so every page classifies customers as the first did.
Every user-supplied value reaches SQL as a bound parameter.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import dataclasses
import io
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta, timezone
from typing import Any, Literal, TypedDict

import orjson
from aiohttp import web

from journeys import identities
from journeys.clickhouse import ClickHouse
from journeys.http import ApiError, json_response
from journeys.keys import Principal
from journeys.stores import Stores
from query.appkeys import STORES
from query.auth import principal_of
from query.kpis import ALL, KpiHeader, KpiRequest
from query.kpis_api import FIRST_DAY, INCLUDES_HEADER, INCLUDES_SQL, LAST_DAY, parse_kpi_request, with_includes
from query.reads import ID_CHUNK, iso
from query.sql import fill
from query.facts.builds import serving_build
from query.facts.locks import consistent_facts, lock_pool
from query.facts.model import conversion_window_ms, holds_key

OUTCOMES = ("reached", "entered", "converted", "dropped", "in_progress")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
CSV_PAGE = ID_CHUNK  # customers per read when streaming a CSV (each page one state of the facts)
TOP = 10  # entries in each drop-off ranking
CURSOR_VERSION = 1

# The net entry facts of one stage and segment key, filtered by the outcome's conditions ($conditions, and
# $after for a page after the first, are replaced by constant SQL chosen here; every value is a bound
# parameter). A customer has at most one net entry per stage. string.Template texts, filled in by
# query.sql.fill: `$name` is SQL text chosen here, `{name:Type}` a value clickhouse-connect binds.
_WHERE = fill(
    """
WHERE project_id = {project_id:String} AND build = {build:UInt64} AND map_name = {map_name:String}
  AND $holds AND fact = 'entry' AND stage = {stage:UInt16}
  AND at < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')""",
    holds=holds_key("segments", "{segment:String}"),
)

_PAGE_SQL = """
SELECT customer_id, toUnixTimestamp64Milli(at) AS at_ms, converted, wait_ms, toString(touchpoint), toString(channel)
FROM stage_facts
$where $conditions $after
GROUP BY customer_id, at, converted, wait_ms, touchpoint, channel
HAVING sum(n) > 0
ORDER BY at_ms DESC, customer_id
LIMIT {limit:UInt32}
SETTINGS apply_mutations_on_fly = 0
"""

_COUNT_SQL = """
SELECT count() FROM (
    SELECT customer_id FROM stage_facts
    $where $conditions
    GROUP BY customer_id, at, converted, wait_ms, touchpoint, channel
    HAVING sum(n) > 0
)
SETTINGS apply_mutations_on_fly = 0
"""

_CONDITIONS = {
    "reached": "",
    "entered": "AND at >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC')",
    "converted": "AND at >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') AND converted = 1",
    "dropped": "AND at >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') AND converted = 0 "
    "AND at <= fromUnixTimestamp64Milli({cutoff_ms:Int64}, 'UTC')",
    "in_progress": "AND at >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') AND converted = 0 "
    "AND at > fromUnixTimestamp64Milli({cutoff_ms:Int64}, 'UTC')",
}
_AFTER = (
    "AND (at < fromUnixTimestamp64Milli({after_ms:Int64}, 'UTC') "
    "OR (at = fromUnixTimestamp64Milli({after_ms:Int64}, 'UTC') AND customer_id > {after_id:String}))"
)

# Every transition of some customers: their current stage is the one of their latest transition.
_MOVES_SQL = """
SELECT customer_id, toUnixTimestamp64Milli(at), from_stage, stage, sum(n) AS net
FROM stage_facts
WHERE project_id = {project_id:String} AND build = {build:UInt64} AND map_name = {map_name:String}
  AND customer_id IN {customers:Array(String)} AND fact = 'move'
GROUP BY customer_id, at, from_stage, stage, move_kind, repeat
HAVING net > 0
SETTINGS apply_mutations_on_fly = 0
"""

# Each message once (of a retried message's copies, the one received last, as every events read keeps:
# query.reads.one_copy_each), then the latest per id in journey order (time, receipt, message id).
_KEPT = """
SELECT distinct_id, message_id,
       argMax(toUnixTimestamp64Milli(timestamp), (received_at, -toUnixTimestamp64Milli(timestamp))) AS t,
       max(toUnixTimestamp64Milli(received_at)) AS r,
       argMax(toString(touchpoint), (received_at, -toUnixTimestamp64Milli(timestamp))) AS tp,
       argMax(toString(channel), (received_at, -toUnixTimestamp64Milli(timestamp))) AS chan
FROM events
WHERE project_id = {project_id:String} AND distinct_id IN {ids:Array(String)}
GROUP BY distinct_id, message_id
"""
_LATEST_SQL = fill(
    """
SELECT distinct_id, argMax((t, r, message_id, tp, chan), (t, r, message_id))
FROM ($kept)
GROUP BY distinct_id
""",
    kept=_KEPT,
)
# What each customer did after entering a stage, up to the end of its conversion window: events per
# (customer, touchpoint, channel). ``owners``/``starts``/``ends`` are parallel to ``ids``.
_AFTER_ENTRY_SQL = fill(
    """
SELECT customer, tp, chan, count() AS events
FROM (
    SELECT transform(distinct_id, {ids:Array(String)}, {owners:Array(String)}, '') AS customer,
           transform(distinct_id, {ids:Array(String)}, {starts:Array(Int64)}, toInt64(0)) AS s,
           transform(distinct_id, {ids:Array(String)}, {ends:Array(Int64)}, toInt64(0)) AS e,
           t, tp, chan
    FROM ($kept)
)
WHERE t > s AND t <= e
GROUP BY customer, tp, chan
""",
    kept=_KEPT,
)


class LastTouch(TypedDict):
    touchpoint: str
    channel: str
    at: str


class BroughtInBy(TypedDict):
    touchpoint: str
    channel: str


class CustomerRow(TypedDict):
    """One customer of a list: when they entered the stage, their outcome there, what brought them in, their
    current stage and their last touch (None without events)."""

    customer_id: str
    entered_at: str
    outcome: str | None  # None at the last stage: there is no next stage
    moved_on_at: str | None
    brought_in_by: BroughtInBy
    current_stage: str | None
    last_touch: LastTouch | None


class StageRef(TypedDict):
    id: str
    name: str
    index: int
    conversion_window_days: float


class ListHeader(KpiHeader):
    """What both answers start with: the KPI header, the segment and the stage."""

    segment: str | None
    stage: StageRef


class Ranked(TypedDict, total=False):
    """A drop-off ranking entry: ``touchpoint`` or ``channel``, the customers, and (after entry) their events."""

    touchpoint: str
    channel: str
    customers: int
    events: int


class AfterEntry(TypedDict):
    customers: int
    touchpoints: list[Ranked]
    channels: list[Ranked]


class DroppedSummary(TypedDict):
    dropped: int
    last_touchpoints: list[Ranked]
    last_channels: list[Ranked]
    after_entry: AfterEntry


@dataclasses.dataclass(frozen=True)
class ListRequest:
    """A validated list question: the KPI request (map, build, window, now) plus stage, outcome and segment."""

    kpi: KpiRequest
    stage: int
    outcome: str
    segment: str  # "" = all customers

    @property
    def stage_id(self) -> str:
        return self.kpi.order[self.stage]

    @property
    def last(self) -> bool:
        return self.stage == len(self.kpi.order) - 1

    @property
    def window_ms(self) -> int:
        return conversion_window_ms(self.kpi.stages[self.stage])

    def params(self) -> dict[str, Any]:
        start_ms = _day_ms(self.kpi.first_day)
        now_ms = _ms(self.kpi.now)
        return {
            "project_id": self.kpi.project_id,
            "build": self.kpi.build,
            "map_name": self.kpi.journey_map.name,
            "segment": self.segment,
            "stage": self.stage,
            "start_ms": start_ms,
            "end_ms": _day_ms(self.kpi.last_day + timedelta(days=1)),
            "cutoff_ms": now_ms - self.window_ms,  # entered(S) <= now - W: the window has closed
        }


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _day_ms(day: date) -> int:
    return _ms(datetime(day.year, day.month, day.day, tzinfo=timezone.utc))


def _at(ms: int) -> str:
    return iso(datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms))


# ---------- reading the facts ----------


@dataclasses.dataclass
class Entry:
    customer_id: str
    at_ms: int
    converted: bool
    wait_ms: int
    touchpoint: str
    channel: str


async def entries_page(ch: ClickHouse, request: ListRequest, limit: int, after: tuple[int, str] | None) -> list[Entry]:
    """Up to ``limit`` customers of the list after ``after`` (entered ms, customer id), newest entry first."""
    params = {**request.params(), "limit": limit}
    after_sql = ""
    if after is not None:
        params.update(after_ms=after[0], after_id=after[1])
        after_sql = _AFTER
    sql = fill(_PAGE_SQL, where=_WHERE, conditions=_CONDITIONS[request.outcome], after=after_sql)
    _, rows = await ch.query(sql, params)
    return [Entry(c, int(at), bool(conv), int(wait), tp, chan) for c, at, conv, wait, tp, chan in rows]


async def count_entries(ch: ClickHouse, request: ListRequest) -> int:
    sql = fill(_COUNT_SQL, where=_WHERE, conditions=_CONDITIONS[request.outcome])
    _, rows = await ch.query(sql, request.params())
    return int(rows[0][0])


async def current_stages(ch: ClickHouse, request: ListRequest, customers: list[str]) -> dict[str, int]:
    """Each customer's current stage (index): the stage of their latest transition. Transitions at the same
    millisecond are chained (the one whose stage no other of them leaves is the latest)."""
    moves: dict[str, list[tuple[int, int, int]]] = {}
    for start in range(0, len(customers), ID_CHUNK):
        params = {**request.params(), "customers": customers[start : start + ID_CHUNK]}
        _, rows = await ch.query(_MOVES_SQL, params)
        for customer, at, from_stage, to_stage, _ in rows:
            moves.setdefault(customer, []).append((int(at), int(from_stage), int(to_stage)))
    out = {}
    for customer, mine in moves.items():
        latest = max(at for at, _, _ in mine)
        tied = [(f, t) for at, f, t in mine if at == latest]
        left = {f for f, _ in tied}
        ends = [t for _, t in tied if t not in left] or [t for _, t in tied]
        out[customer] = max(ends)
    return out


# ---------- reading the events of stitched customers ----------


def _chunks(members: dict[str, set[str]]) -> Iterable[dict[str, set[str]]]:
    """Customers in groups of about ID_CHUNK ids, a customer's ids never split across groups."""
    group: dict[str, set[str]] = {}
    size = 0
    for customer, ids in members.items():
        if group and size + len(ids) > ID_CHUNK:
            yield group
            group, size = {}, 0
        group[customer] = ids
        size += len(ids)
    if group:
        yield group


async def last_touches(ch: ClickHouse, project_id: str, members: dict[str, set[str]]) -> dict[str, LastTouch]:
    """Each customer's latest event (journey order over all their ids, each message once): its touchpoint,
    channel and time. Customers without events are absent."""
    best: dict[str, tuple[int, int, str, str, str]] = {}
    for group in _chunks(members):
        owner = {i: c for c, ids in group.items() for i in ids}
        _, rows = await ch.query(_LATEST_SQL, {"project_id": project_id, "ids": sorted(owner)})
        for distinct_id, latest in rows:
            t, r, message_id, tp, chan = latest
            customer = owner[distinct_id]
            key = (int(t), int(r), message_id, tp, chan)
            if customer not in best or key[:3] > best[customer][:3]:
                best[customer] = key
    return {c: {"touchpoint": tp, "channel": chan, "at": _at(t)} for c, (t, _, _, tp, chan) in best.items()}


async def touches_after_entry(
    ch: ClickHouse, project_id: str, members: dict[str, set[str]], spans: dict[str, tuple[int, int]]
) -> list[tuple[str, str, str, int]]:
    """(customer, touchpoint, channel, events) of each customer's events in ``(start, end]`` ms."""
    out: list[tuple[str, str, str, int]] = []
    for group in _chunks(members):
        ids, owners, starts, ends = [], [], [], []
        for customer, mine in group.items():
            for i in sorted(mine):
                ids.append(i)
                owners.append(customer)
                starts.append(spans[customer][0])
                ends.append(spans[customer][1])
        _, rows = await ch.query(
            _AFTER_ENTRY_SQL, {"project_id": project_id, "ids": ids, "owners": owners, "starts": starts, "ends": ends}
        )
        out += [(c, tp, chan, int(n)) for c, tp, chan, n in rows]
    return out


# ---------- shaping ----------


def _outcome_of(request: ListRequest, entry: Entry) -> str | None:
    if request.last:
        return None
    if entry.converted:
        return "converted"
    return "dropped" if entry.at_ms <= _ms(request.kpi.now) - request.window_ms else "in_progress"


async def _rows(
    ch: ClickHouse, request: ListRequest, entries: list[Entry], stages: dict[str, int]
) -> list[CustomerRow]:
    customers = [e.customer_id for e in entries]
    touches = await last_touches(
        ch, request.kpi.project_id, await identities.members_of(ch, request.kpi.project_id, customers)
    )
    order = request.kpi.order
    return [
        {
            "customer_id": e.customer_id,
            "entered_at": _at(e.at_ms),
            "outcome": _outcome_of(request, e),
            "moved_on_at": _at(e.at_ms + e.wait_ms) if e.converted else None,
            "brought_in_by": {"touchpoint": e.touchpoint, "channel": e.channel},
            "current_stage": order[stages[e.customer_id]] if e.customer_id in stages else None,
            "last_touch": touches.get(e.customer_id),
        }
        for e in entries
    ]


def _header(request: ListRequest) -> ListHeader:
    kpi = request.kpi
    stage = kpi.stages[request.stage]
    return {
        "map": {"name": kpi.journey_map.name, "version": kpi.map_version},
        "window": {"from": kpi.first_day.isoformat(), "to": kpi.last_day.isoformat()},
        "as_of": iso(kpi.now),
        "rebuilding": kpi.rebuilding,
        "segment": request.segment or None,
        "stage": {
            "id": stage.id,
            "name": stage.name,
            "index": request.stage,
            "conversion_window_days": stage.conversion_window_days,
        },
    }


# ---------- the cursor ----------


def _cursor(request: ListRequest, after: tuple[int, str]) -> str:
    kpi = request.kpi
    raw = [
        CURSOR_VERSION,
        kpi.build,
        _ms(kpi.now),
        kpi.first_day.isoformat(),
        kpi.last_day.isoformat(),
        kpi.journey_map.name,
        request.stage_id,
        request.outcome,
        request.segment,
        after[0],
        after[1],
    ]
    return base64.urlsafe_b64encode(orjson.dumps(raw)).decode().rstrip("=")


def _bad_cursor(reason: str = "not a cursor this endpoint gave out") -> ApiError:
    return ApiError(400, [{"field": "cursor", "reason": reason}])


def _read_cursor(text: str) -> list[Any]:
    if len(text) > 2000:
        raise _bad_cursor()
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        ok = (
            isinstance(raw, list)
            and len(raw) == 11
            and raw[0] == CURSOR_VERSION
            and all(isinstance(raw[i], int) and not isinstance(raw[i], bool) for i in (1, 2, 9))
            and all(isinstance(raw[i], str) for i in (3, 4, 5, 6, 7, 8, 10))
        )
        if ok:  # in the ranges the API accepts (ClickHouse's DateTime64 ends in 2299)
            days = date.fromisoformat(raw[3]), date.fromisoformat(raw[4])
            ok = all(FIRST_DAY <= d <= LAST_DAY for d in days) and all(
                _day_ms(FIRST_DAY) <= raw[i] < _day_ms(LAST_DAY) for i in (2, 9)
            )
    except (ValueError, TypeError, OverflowError, OSError):
        raise _bad_cursor() from None
    if not ok:
        raise _bad_cursor()
    return raw


# ---------- parameters ----------


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6 and 1 <= int(raw) <= MAX_LIMIT):
        raise ApiError(400, [{"field": "limit", "reason": f"must be an integer from 1 to {MAX_LIMIT}"}])
    return int(raw)


async def _list_request(
    request: web.Request, principal: Principal, stores: Stores, *, outcome_required: bool = True
) -> tuple[ListRequest, bool, list[Any] | None]:
    """(the list question, CSV wanted, the decoded cursor or None). Bad parameters: 400 naming them; an
    unknown map, stage or segment: 404."""
    query = request.query
    outcome = query.get("outcome", "dropped" if not outcome_required else "")
    if outcome not in OUTCOMES:
        raise ApiError(400, [{"field": "outcome", "reason": "required: one of " + ", ".join(OUTCOMES)}])
    if query.get("segment") == "*":
        raise ApiError(400, [{"field": "segment", "reason": "one segment (or none, for all customers), not *"}])
    stage_id = query.get("stage", "")
    if not stage_id:
        raise ApiError(400, [{"field": "stage", "reason": "required: the id of a stage of the map"}])
    cursor = _read_cursor(query["cursor"]) if query.get("cursor") else None
    kpi, csv_wanted = await parse_kpi_request(request, principal, stores)
    if stage_id not in kpi.order:
        raise ApiError(404, [{"field": "stage", "reason": f"map {kpi.journey_map.name!r} has no stage {stage_id!r}"}])
    segment = ALL if kpi.segments is None else kpi.segments[0]
    list_request = ListRequest(kpi, kpi.order.index(stage_id), outcome, segment)
    if list_request.last and outcome in ("converted", "dropped", "in_progress"):
        if not outcome_required:  # /v1/kpis/dropped: the stage is what is wrong
            raise ApiError(400, [{"field": "stage", "reason": "the last stage has no next stage: nobody drops there"}])
        raise ApiError(
            400, [{"field": "outcome", "reason": "the last stage has no next stage: only reached or entered"}]
        )
    if cursor is not None:
        _, build, now_ms, first, last, map_name, c_stage, c_outcome, c_segment, _, _ = cursor
        if (map_name, c_stage, c_outcome, c_segment) != (kpi.journey_map.name, stage_id, outcome, segment):
            raise _bad_cursor("belongs to another list (map, stage, outcome or segment differ)")
        for name, value in (("from", first), ("to", last)):
            if query.get(name) and query[name] != value:
                raise _bad_cursor(f"belongs to another window (`{name}` was {value})")
        if build != kpi.build:
            raise _bad_cursor(
                "the KPIs were recomputed for new map or segment versions since the first page: start again"
            )
        kpi = dataclasses.replace(
            kpi,
            now=datetime.fromtimestamp(now_ms / 1000, timezone.utc),
            first_day=date.fromisoformat(first),
            last_day=date.fromisoformat(last),
        )
        list_request = dataclasses.replace(list_request, kpi=kpi)
    return list_request, csv_wanted, cursor


# ---------- HTTP ----------

CSV_COLUMNS = (
    "customer_id",
    "entered_at",
    "outcome",
    "moved_on_at",
    "current_stage",
    "last_touchpoint",
    "last_channel",
    "last_touch_at",
    "brought_in_by_touchpoint",
    "brought_in_by_channel",
)


def _csv_cell(value: Any) -> str:
    """As the dashboard writes CSV: a leading =, +, -, @, tab or CR gets a ' so a spreadsheet does not run it."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv_lines(rows: list[CustomerRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in rows:
        touch: Mapping[str, object] = row["last_touch"] or {}
        writer.writerow(
            [
                _csv_cell(v)
                for v in (
                    row["customer_id"],
                    row["entered_at"],
                    row["outcome"],
                    row["moved_on_at"],
                    row["current_stage"],
                    touch.get("touchpoint"),
                    touch.get("channel"),
                    touch.get("at"),
                    row["brought_in_by"]["touchpoint"],
                    row["brought_in_by"]["channel"],
                )
            ]
        )
    return out.getvalue()


routes = web.RouteTableDef()  # GET /v1/kpis/customers and GET /v1/kpis/dropped (read key)


async def _read_page(
    ch: ClickHouse, request: ListRequest, limit: int, after: tuple[int, str] | None, with_total: bool
) -> tuple[list[Entry], dict[str, int], int | None]:
    """One page of the list (``limit`` + 1 entries: one more says there is more) and its customers' current
    stages; call under :func:`consistent_facts`, so that it is one state of the facts."""
    entries, total = await asyncio.gather(
        entries_page(ch, request, limit + 1, after),
        count_entries(ch, request) if with_total else asyncio.sleep(0, None),
    )
    stages = await current_stages(ch, request, [e.customer_id for e in entries[:limit]])
    return entries, stages, total


@routes.get("/v1/kpis/customers")
async def customers(request: web.Request) -> web.StreamResponse:
    stores = request.app[STORES]
    principal = await principal_of(request)
    limit = _limit(request)
    ch = stores.clickhouse
    # As /v1/kpis: the serving build and the facts read while no facts write can become visible.
    async with consistent_facts(lock_pool(stores), principal.project_id):
        acknowledged_before = await stores.pg.fetchval(INCLUDES_SQL)
        list_request, csv_wanted, cursor = await _list_request(request, principal, stores)
        after = None if cursor is None else (cursor[9], cursor[10])
        size = CSV_PAGE if csv_wanted else limit
        entries, stages, total = await _read_page(ch, list_request, size, after, not csv_wanted)
    if csv_wanted:
        return await _stream_csv(
            request, stores, principal.project_id, list_request, acknowledged_before, entries, stages
        )
    more = len(entries) > limit
    entries = entries[:limit]
    body = {
        **_header(list_request),
        "outcome": list_request.outcome,
        "total": total,
        "customers": await _rows(ch, list_request, entries, stages),
        "next_cursor": _cursor(list_request, (entries[-1].at_ms, entries[-1].customer_id)) if more else None,
    }
    result = with_includes(body, acknowledged_before)
    headers = {INCLUDES_HEADER: result["includes"]["acknowledged_before"]} if acknowledged_before else {}
    return json_response(result, headers=headers)


async def _stream_csv(
    request: web.Request,
    stores: Stores,
    project_id: str,
    list_request: ListRequest,
    acknowledged_before: datetime | None,
    entries: list[Entry],
    stages: dict[str, int],
) -> web.StreamResponse:
    """Every page, CSV_PAGE customers at a time, each page from one state of the facts (the lock is not held
    while the client reads: a slow download must not hold up the facts writer)."""
    name = f"customers-{list_request.kpi.journey_map.name}-{list_request.stage_id}-{list_request.outcome}"
    headers = {"Content-Disposition": f'attachment; filename="{name}.csv"'}
    if acknowledged_before:
        headers[INCLUDES_HEADER] = iso(acknowledged_before)
    response = web.StreamResponse(headers=headers)
    response.content_type = "text/csv"
    await response.prepare(request)
    await response.write((",".join(CSV_COLUMNS) + "\n").encode())
    while True:
        more = len(entries) > CSV_PAGE
        entries = entries[:CSV_PAGE]
        await response.write(_csv_lines(await _rows(stores.clickhouse, list_request, entries, stages)).encode())
        if not more:
            break
        after = (entries[-1].at_ms, entries[-1].customer_id)
        async with consistent_facts(lock_pool(stores), project_id):
            if (await serving_build(stores.pg, project_id)).number != list_request.kpi.build:
                # New definitions serve now and the old facts go: the rest cannot be read. Cut the
                # connection so the download fails rather than ending short as if complete.
                if request.transport is not None:
                    request.transport.close()
                return response
            entries, stages, _ = await _read_page(stores.clickhouse, list_request, CSV_PAGE, after, False)
    await response.write_eof()
    return response


@routes.get("/v1/kpis/dropped")
async def dropped(request: web.Request) -> web.Response:
    stores = request.app[STORES]
    principal = await principal_of(request)
    for name in ("outcome", "cursor", "limit"):
        if name in request.query:
            raise ApiError(400, [{"field": name, "reason": "not a parameter of /v1/kpis/dropped"}])
    if request.query.get("format", "json") != "json":
        raise ApiError(400, [{"field": "format", "reason": "must be json"}])
    async with consistent_facts(lock_pool(stores), principal.project_id):
        acknowledged_before = await stores.pg.fetchval(INCLUDES_SQL)
        list_request, _, _ = await _list_request(request, principal, stores, outcome_required=False)
        entries = await entries_page(stores.clickhouse, list_request, 2**31, None)
    body = {**_header(list_request), **await dropped_summary(stores.clickhouse, list_request, entries)}
    result = with_includes(body, acknowledged_before)
    headers = {INCLUDES_HEADER: result["includes"]["acknowledged_before"]} if acknowledged_before else {}
    return json_response(result, headers=headers)


def _ranked(
    counts: dict[str, int], label: Literal["touchpoint", "channel"], events: dict[str, int] | None = None
) -> list[Ranked]:
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]
    out: list[Ranked] = []
    for k, v in ranked:
        entry: Ranked = {"touchpoint": k, "customers": v} if label == "touchpoint" else {"channel": k, "customers": v}
        if events is not None:
            entry["events"] = events[k]
        out.append(entry)
    return out


async def dropped_summary(ch: ClickHouse, request: ListRequest, entries: list[Entry]) -> DroppedSummary:
    """What the customers who dropped at the stage (``entries``) did last, and after entering it."""
    project_id = request.kpi.project_id
    members = await identities.members_of(ch, project_id, [e.customer_id for e in entries])
    window = request.window_ms
    spans = {e.customer_id: (e.at_ms, e.at_ms + window) for e in entries}
    touches, after = await asyncio.gather(
        last_touches(ch, project_id, members), touches_after_entry(ch, project_id, members, spans)
    )
    last_tp: Counter[str] = Counter(t["touchpoint"] for t in touches.values())
    last_chan: Counter[str] = Counter(t["channel"] for t in touches.values())
    tp_customers: dict[str, set[str]] = {}
    chan_customers: dict[str, set[str]] = {}
    tp_events: Counter[str] = Counter()
    chan_events: Counter[str] = Counter()
    for customer, tp, chan, n in after:
        tp_customers.setdefault(tp, set()).add(customer)
        chan_customers.setdefault(chan, set()).add(customer)
        tp_events[tp] += n
        chan_events[chan] += n
    return {
        "dropped": len(entries),
        "last_touchpoints": _ranked(dict(last_tp), "touchpoint"),
        "last_channels": _ranked(dict(last_chan), "channel"),
        "after_entry": {
            "customers": len({c for c, _, _, _ in after}),
            "touchpoints": _ranked({k: len(v) for k, v in tp_customers.items()}, "touchpoint", dict(tp_events)),
            "channels": _ranked({k: len(v) for k, v in chan_customers.items()}, "channel", dict(chan_events)),
        },
    }
