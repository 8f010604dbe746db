"""Stage KPIs per customer segment, from the stage facts (never from a rescan of events or customers).

Every number follows the definitions in docs/kpis.md; tests compare them with a brute-force computation over
raw events. The queries read the projections of ``stage_facts`` (query/facts/ writes the facts):
pre-aggregated counts per set of segment keys, stage and day for entries, moves, sentiments and entry sources, and the
entries ordered by wait for the exact quantiles and for the one boundary day per stage where dropped vs in
progress depends on the time of day. The whole window (:func:`stage_kpis`) and the daily series
(:func:`daily_kpis`) are the same queries, grouped by a constant or by the day; they run side by side.

Every user-supplied value (project, map, segment, dates) is a bound parameter; the SQL text only ever
contains the grouping expression we chose.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from fractions import Fraction
from typing import Any, Literal, TypedDict

from journeys.clickhouse import ClickHouse
from query.maps import JourneyMap, Stage
from query.reads import iso
from query.sql import fill
from query.facts.model import DAY_MS, conversion_window_ms, holds_key, split_keys

TOP = 5
ALL = ""  # the segment key of "all customers"

# Every query reads a projection of stage_facts (migrations 0006, 0012), never per-customer rows; `$day` is `day`
# for the daily series and a constant for the whole window. A fact row carries all of its customer's segment
# keys, joined by ',' (`segments`: ',b2b,vip', or '' in no segment): each query sums by that text inside, from
# the projection, then splits the sums among the keys asked for ($by_key) and sums again (one key asked for: a
# filter by it alone, _key_fragments); anything judged on a net count (HAVING) is judged after that.
# apply_mutations_on_fly = 0: a pending DELETE (old builds, garbage only) must not push the read off the projections.
#
# The queries are string.Template texts, filled in by one function (_sql, over query.sql.fill): `$name` is SQL
# text chosen here (these fragments, the grouping expression, _OPEN_SQL's ranges), `{name:Type}` a value
# clickhouse-connect binds, written as ClickHouse reads it.
_WHERE = "project_id = {project_id:String} AND build = {build:UInt64} AND map_name = {map_name:String}"
_IN_WINDOW = "day >= {first_day:Date} AND day <= {last_day:Date}"
_SETTINGS = "SETTINGS apply_mutations_on_fly = 0"
# Each sum by key set (`segs`) once per key of it that was asked for (`seg`).
_BY_KEY = f"ARRAY JOIN {split_keys('segs')} AS seg WHERE seg IN {{segments:Array(String)}}"


def _key_fragments(keys: list[str]) -> dict[str, str]:
    """The keys each row counts under (``$row_keys``) and the rows read (``$where``). Several keys asked for: a
    row's own ``segments``, read where it holds one of them. One key: that key, read where the row holds it (all
    customers: every row, each holds ``''``); the key sets are then neither grouped by nor split, only filtered
    (1 M customers, the histogram's read: one segment 49-55 → 27-29 ms, all customers 56-65 → 27-35 ms)."""
    where = _WHERE
    if ALL not in keys:  # every row holds '' (all customers)
        held = (holds_key("segments", f"{{segments:Array(String)}}[{i}]") for i in range(1, len(keys) + 1))
        where += " AND (" + " OR ".join(held) + ")"
    converted_waits = "\nFROM stage_facts\nWHERE " + where + " AND fact = 'entry' AND converted = 1 AND " + _IN_WINDOW
    row_keys = "segments" if len(keys) > 1 else "{segments:Array(String)}[1]"
    return {"row_keys": row_keys, "where": where, "converted_waits": converted_waits}


# Entries by stage (and day): reached counts every entry up to the window's end; dropped and in progress
# are decided by the day where that is the whole day's answer — before the stage's boundary day every
# window has closed, after it none has. Of the boundary day's open entries, _OPEN_SQL counts those still in
# progress; the rest (boundary_open - in progress) are dropped.
_ENTRIES_SQL = """
SELECT seg, stage, d,
       sum(c) AS reached_n,
       sumIf(c, day >= {first_day:Date}) AS entered_n,
       sumIf(c, day >= {first_day:Date} AND converted = 1) AS converted_n,
       sumIf(c, day >= {first_day:Date} AND converted = 0 AND day < {boundary_days:Array(Date)}[stage + 1]) AS dropped_n,
       sumIf(c, day >= {first_day:Date} AND converted = 0 AND day > {boundary_days:Array(Date)}[stage + 1]) AS in_progress_n,
       sumIf(c, day >= {first_day:Date} AND converted = 0 AND day = {boundary_days:Array(Date)}[stage + 1]) AS boundary_open_n
FROM (  -- plain sum(n) by projection keys inside: ClickHouse answers that from the counts projection, not sumIf
    SELECT $row_keys AS segs, stage, $day AS d, day, converted, sum(n) AS c
    FROM stage_facts
    WHERE $where AND fact = 'entry' AND day <= {last_day:Date}
    GROUP BY segs, stage, d, day, converted
)
$by_key
GROUP BY seg, stage, d
$settings
"""

# Open entries of a boundary day entered after the stage's cutoff (now - W): still in progress. One
# `stage AND day AND at` range per stage (filled in by _open_entries), with wait_ms = 0 (true of every open
# entry) so the waits projection's key — ... converted, wait_bucket, day, wait_ms, at — bounds each range
# to exactly those rows.
_OPEN_SQL = """
SELECT seg, stage, d, sum(c) AS in_progress_n
FROM (
    SELECT $row_keys AS segs, stage, $day AS d, sum(n) AS c
    FROM stage_facts
    WHERE $where AND fact = 'entry' AND converted = 0 AND wait_bucket = 0 AND wait_ms = 0 AND ($ranges)
    GROUP BY segs, stage, d
)
$by_key
GROUP BY seg, stage, d
$settings
"""
_OPEN_RANGE = (
    "(stage = {open_stage_${i}:UInt16} AND day = {open_day_${i}:Date} "
    "AND at > fromUnixTimestamp64Milli({open_cutoff_${i}:Int64}, 'UTC'))"
)

# Exact nearest-rank quantiles of the time to convert, in two small reads instead of ranking every wait:
# (1) per stage (and day), net counts per wait bin (the histogram); Python finds the bin holding each wanted
# rank — ceil(n/2), ceil(9n/10), and for the target's bounds ranks that depend on how many are in progress
# (_median_bounds) — and the rank inside it, in integer arithmetic (the ranks of quantileExactLow at 0.5 and
# 0.9 - 1e-10, without floating point); (2) only those bins' waits, netted (+1/-1 pairs of a withdrawn fact
# cancel) and ranked.
_WAIT_HISTOGRAMS_SQL = """
SELECT seg, stage, d, arraySort(groupArray((b, c))) AS histogram
FROM (
    SELECT seg, stage, d, b, sum(part) AS c
    FROM (
        SELECT $row_keys AS segs, stage, $day AS d, wait_bucket AS b, sum(n) AS part $converted_waits
        GROUP BY segs, stage, d, b
    )
    $by_key
    GROUP BY seg, stage, d, b
    HAVING c > 0
)
GROUP BY seg, stage, d
$settings
"""

_QUANTILE_PICK_SQL = """
SELECT seg, stage, d, b, asked, arrayMap(r -> vc[arrayFirstIndex(s -> s >= r, cum)].1, asked) AS picked
FROM (
    SELECT seg, stage, d, b, arraySort(groupArray((w, c))) AS vc, arrayCumSum(arrayMap(x -> x.2, vc)) AS cum,
           {ranks:Array(Array(UInt64))}[indexOf({bins:Array(Tuple(String, UInt16, Date, UInt16))},
                                                 (toString(seg), stage, d, b))] AS asked
    FROM (
        SELECT seg, stage, d, b, w, sum(part) AS c
        FROM (
            SELECT $row_keys AS segs, stage, $day AS d, wait_bucket AS b, wait_ms AS w, sum(n) AS part $converted_waits
              AND (stage, wait_bucket) IN {stage_bins:Array(Tuple(UInt16, UInt16))}  -- what the index can use
            GROUP BY segs, stage, d, b, w
        )
        $by_key AND (seg, stage, b) IN {bin_keys:Array(Tuple(String, UInt16, UInt16))}
        GROUP BY seg, stage, d, b, w
        HAVING c > 0
    )
    GROUP BY seg, stage, d, b  -- no HAVING on `asked`: ClickHouse would push it down to every row read
)
$settings
"""

# What brought the customers who entered a stage in the window (the whole window only).
_SOURCES_SQL = """
SELECT seg, stage, tp, ch, sum(part) AS c
FROM (
    SELECT $row_keys AS segs, stage, toString(touchpoint) AS tp, toString(channel) AS ch, sum(n) AS part
    FROM stage_facts
    WHERE $where AND fact = 'entry' AND $in_window
    GROUP BY segs, stage, touchpoint, channel
)
$by_key
GROUP BY seg, stage, tp, ch
HAVING c != 0
$settings
"""

_MOVES_SQL = """
SELECT seg, d, stage, from_stage, kind, repeat, sum(part) AS c
FROM (
    SELECT $row_keys AS segs, $day AS d, stage, from_stage, toString(move_kind) AS kind, repeat, sum(n) AS part
    FROM stage_facts
    WHERE $where AND fact = 'move' AND $in_window
    GROUP BY segs, d, stage, from_stage, move_kind, repeat
)
$by_key
GROUP BY seg, d, stage, from_stage, kind, repeat
HAVING c != 0
$settings
"""

_FEELINGS_SQL = """
SELECT seg, d, stage, feeling, sum(part) AS c
FROM (
    SELECT $row_keys AS segs, $day AS d, stage, toString(sentiment) AS feeling, sum(n) AS part
    FROM stage_facts
    WHERE $where AND fact = 'feeling' AND $in_window
    GROUP BY segs, d, stage, sentiment
)
$by_key
GROUP BY seg, d, stage, feeling
HAVING c != 0
$settings
"""


def _sql(template: str, params: dict[str, Any], **parts: str) -> str:
    """A query's text: ``template``'s ``$name`` placeholders replaced by the fragments above (those of the keys
    ``params`` asks for: :func:`_key_fragments`) and ``parts`` (``day``: the grouping expression; ``ranges``,
    ``i``: :data:`_OPEN_SQL`'s ranges), all of it SQL chosen here. Values stay ``{name:Type}`` parameters, bound by
    clickhouse-connect (:func:`query.sql.fill`)."""
    fragments = {"in_window": _IN_WINDOW, "settings": _SETTINGS, "by_key": _BY_KEY}
    return fill(template, **fragments, **_key_fragments(params["segments"]), **parts)


# ---------- the answers (docs/kpis.md; query/api_spec.py documents the same shapes) ----------

MapRef = TypedDict("MapRef", {"name": str, "version": "int | None"})  # version None: a preview's draft
Window = TypedDict("Window", {"from": str, "to": str})  # `from` is a keyword: the functional form


class KpiHeader(TypedDict):
    """What every KPI answer starts with: which map, which days, evaluated when, and whether newer
    definitions are being computed meanwhile."""

    map: MapRef
    window: Window
    as_of: str
    rebuilding: dict[str, Any] | None


class RateBounds(TypedDict):
    lowest: float
    highest: float


class Quantiles(TypedDict):
    median: float | None
    p90: float | None


class Sentiment(TypedDict):
    positive: int
    neutral: int
    negative: int


class TouchpointCount(TypedDict):
    touchpoint: str
    customers: int


class ChannelCount(TypedDict):
    channel: str
    customers: int


class TargetCheck(TypedDict):
    """One target metric judged on what is decided (docs/kpis.md, Targets)."""

    metric: str
    target: float
    actual: float | None
    lowest: float | None
    highest: float | None
    shortfall: float | None
    status: str


class Bottleneck(TypedDict):
    stage: str
    metric: str
    target: float
    actual: float | None
    lowest: float | None
    highest: float | None
    shortfall: float | None


class DailyStageKpis(TypedDict):
    """One stage's KPIs on one day. The counts of what follows a stage (converted, dropped, in progress and
    their rates) are None for the last stage: it has no next stage."""

    id: str
    reached: int
    entered: int
    converted: int | None
    dropped: int | None
    in_progress: int | None
    decided_share: float | None
    conversion_rate: float | None
    conversion_rate_bounds: RateBounds | None
    converted_of_entered: float | None
    drop_off_rate: float | None
    drop_off_rate_bounds: RateBounds | None
    time_to_next_seconds: Quantiles
    regressions_into: int
    skips_over: int
    repeats: int
    sentiment: Sentiment
    status: str


class StageKpis(DailyStageKpis):
    """One stage's KPIs over the whole window: a day's, and what only the whole window says (name, index,
    targets, top touchpoints and channels, the conversion window). The answer's keys come in the order
    :func:`_shape_stage` writes them (docs/kpis.md), not this class's."""

    name: str
    index: int
    conversion_window_days: float
    top_touchpoints: list[TouchpointCount]
    top_channels: list[ChannelCount]
    target: dict[str, Any] | None
    targets: list[TargetCheck]


Transition = TypedDict("Transition", {"from": "str | None", "to": str, "kind": str, "count": int})


class SegmentKpis(TypedDict):
    segment: str | None  # None: all customers
    stages: list[StageKpis]
    transitions: list[Transition]
    bottleneck: Bottleneck | None


class KpiAnswer(KpiHeader):
    """``GET /v1/kpis``: per segment asked, every stage's KPIs over the window."""

    segments: list[SegmentKpis]


class DayKpis(TypedDict):
    date: str
    stages: list[DailyStageKpis]


class DailySegmentKpis(TypedDict):
    segment: str | None
    days: list[DayKpis]


class DailyKpiAnswer(KpiHeader):
    """``GET /v1/kpis/daily``: per segment asked, every stage's KPIs day by day."""

    segments: list[DailySegmentKpis]


class _RawStage(TypedDict):
    """A stage's counts as they are folded from the query rows, before they are shaped into an answer."""

    reached: int
    entered: int
    converted: int
    dropped: int
    in_progress: int
    median_ms: int | None
    p90_ms: int | None
    median_bounds_ms: tuple[int, int] | None
    touchpoints: dict[str, int]
    channels: dict[str, int]
    regressions_into: int
    skips_over: int
    repeats: int
    sentiment: Sentiment


@dataclass(frozen=True)
class KpiRequest:
    """A validated KPI question: which map version, which segments, which days, evaluated at ``now``."""

    project_id: str
    journey_map: JourneyMap
    map_version: int
    build: int  # the stage-facts build that serves KPIs (query/facts/builds.py)
    order: list[str]
    segments: list[str] | None  # None: all customers only; otherwise these segment names ("" = all)
    first_day: date
    last_day: date
    now: datetime
    rebuilding: dict[str, Any] | None = None  # set while newer definitions are being computed
    # The fingerprints of the definitions the build serves and of the newest: what the answer is computed for.
    definitions: str = ""

    @property
    def stages(self) -> list[Stage]:
        by_id = {s.id: s for s in self.journey_map.stages}
        return [by_id[s] for s in self.order]


def _params(request: KpiRequest) -> dict[str, Any]:
    now_ms = int(request.now.timestamp() * 1000)
    cutoffs = [now_ms - conversion_window_ms(stage) for stage in request.stages]  # entered <= cutoff: closed
    boundary_days = [datetime.fromtimestamp(max(c, 0) / 1000, timezone.utc).date() for c in cutoffs]
    return {
        "project_id": request.project_id,
        "map_name": request.journey_map.name,
        "build": request.build,
        "segments": [ALL] if request.segments is None else list(request.segments),
        "first_day": request.first_day,
        "last_day": request.last_day,
        "boundary_days": boundary_days,
        **{
            f"open_{name}_{i}": value
            for i, (cutoff, day) in enumerate(zip(cutoffs, boundary_days))
            if request.first_day <= day <= request.last_day
            for name, value in (("stage", i), ("day", day), ("cutoff", cutoff))
        },
    }


async def _open_entries(ch: ClickHouse, day: str, params: dict[str, Any]) -> dict[tuple[str, int, date], int]:
    """(segment, stage, d) → open entries of the stage's boundary day still inside their window."""
    ranges = " OR ".join(
        _sql(_OPEN_RANGE, params, i=k.removeprefix("open_stage_")) for k in params if k.startswith("open_stage_")
    )
    if not ranges:  # no stage's boundary day falls in the window
        return {}
    _, rows = await ch.query(_sql(_OPEN_SQL, params, day=day, ranges=ranges), params)
    return {(seg, stage, d): n for seg, stage, d, n in rows}


Key = tuple[str, int, date]  # (segment, stage, d)


async def _wait_histograms(ch: ClickHouse, day: str, params: dict[str, Any]) -> dict[Key, list[tuple[int, int]]]:
    """(segment, stage, d) → the converted entries' waits as (bin, net count), in bin order."""
    _, rows = await ch.query(_sql(_WAIT_HISTOGRAMS_SQL, params, day=day), params)
    return {(seg, stage, d): [(int(b), int(c)) for b, c in histogram] for seg, stage, d, histogram in rows}


def _locate(histogram: list[tuple[int, int]], rank: int) -> tuple[int, int]:
    """The bin holding the ``rank``-th smallest wait (1-based) and the rank inside that bin."""
    below = 0
    for b, count in histogram:
        if below + count >= rank:
            return b, rank - below
        below += count
    raise ValueError(f"rank {rank} beyond {below} waits")


async def _pick(
    ch: ClickHouse,
    day: str,
    params: dict[str, Any],
    histograms: dict[Key, list[tuple[int, int]]],
    ranks: dict[Key, list[int]],
) -> dict[tuple[Key, int], int]:
    """The exact ``rank``-th smallest wait of each key, for every rank asked: ((segment, stage, d), rank) → ms."""
    asked: dict[tuple[str, int, date, int], list[int]] = {}
    where: dict[tuple[Key, int], tuple[tuple[str, int, date, int], int]] = {}
    for key, wanted in ranks.items():
        for rank in wanted:
            b, inside = _locate(histograms[key], rank)
            slot = (*key, b)
            inside_ranks = asked.setdefault(slot, [])
            if inside not in inside_ranks:
                inside_ranks.append(inside)
            where[(key, rank)] = (slot, inside)
    if not asked:
        return {}
    _, rows = await ch.query(
        _sql(_QUANTILE_PICK_SQL, params, day=day),
        {
            **params,
            "bins": list(asked),
            "ranks": list(asked.values()),
            "bin_keys": sorted({(k[0], k[1], k[3]) for k in asked}),
            "stage_bins": sorted({(k[1], k[3]) for k in asked}),
        },
    )
    # A bin's waits come back for every day that has some (daily series); `asked` is empty on the others.
    picked = {(seg, stage, d, b, r): v for seg, stage, d, b, inside, values in rows for r, v in zip(inside, values)}
    return {at: picked[(*slot, inside)] for at, (slot, inside) in where.items()}


def _median_ranks(n: int, in_progress: int) -> tuple[int | None, int | None]:
    """Where the final median of a stage's time to convert can fall once its ``in_progress`` customers are
    decided, as ranks among the ``n`` waits known now (``None``: outside them — 0 below, W above).

    Highest: every one of them converts at the last moment, W: the median is rank ceil((n+P)/2) of the
    known waits (or W, when that rank is past them). Lowest: every one of them converts at once (wait 0) —
    a bound, since none can convert faster than the time it has already spent: rank ceil((n+P)/2) - P (or
    0, when that is not a rank). Adding a wait at or above the median never lowers it and one at or below
    never raises it, so no other outcome lies outside these two."""
    k = -(-(n + in_progress) // 2)
    lowest = k - in_progress
    return (lowest if lowest >= 1 else None), (k if k <= n else None)


async def _collect(
    ch: ClickHouse, request: KpiRequest, daily: bool
) -> tuple[list[dict[str, Any]], list[tuple], list[tuple]]:
    """(entries, transitions, sentiments) rows as :func:`_fold` takes them, keyed by segment and ``d`` (the
    day, or one constant for the whole window)."""
    params = _params(request)
    day = "day" if daily else "toDate(0)"
    queries = [_ENTRIES_SQL, _MOVES_SQL, _FEELINGS_SQL] + ([] if daily else [_SOURCES_SQL])
    results = await asyncio.gather(
        _wait_histograms(ch, day, params),
        _open_entries(ch, day, params),
        *(ch.query(_sql(sql, params, day=day), params) for sql in queries),
    )
    histograms, still_open, (_, entry_rows), (_, transitions), (_, sentiments) = results[:5]
    sources: dict[tuple[str, int], tuple[dict[str, int], dict[str, int]]] = {}
    for seg, stage, touchpoint, channel, count in results[5][1] if not daily else ():
        by_touchpoint, by_channel = sources.setdefault((seg, stage), ({}, {}))
        by_touchpoint[touchpoint] = by_touchpoint.get(touchpoint, 0) + count
        by_channel[channel] = by_channel.get(channel, 0) + count
    entries = []
    fields = ("seg", "stage", "d", "reached", "entered", "converted", "dropped", "in_progress", "boundary_open")
    for row in entry_rows:
        entry = dict(zip(fields, row))  # the SQL names differ: an alias `converted` would shadow the column
        key = (entry["seg"], entry["stage"], entry["d"])
        in_progress = still_open.get(key, 0)
        entry["dropped"] += entry.pop("boundary_open") - in_progress
        entry["in_progress"] += in_progress
        entries.append(entry)
    # The wanted ranks of each key's waits: median and p90; for the whole window's targets, also the ranks
    # bounding the median once the customers in progress are decided.
    wanted: dict[Key, list[int]] = {}
    waits = {key: sum(count for _, count in histogram) for key, histogram in histograms.items()}
    for entry in entries:
        key = (entry["seg"], entry["stage"], entry["d"])
        n = waits.get(key, 0)
        if n:
            wanted[key] = [-(-n // 2), -(-9 * n // 10)]
            if not daily and entry["in_progress"]:
                wanted[key] += [r for r in _median_ranks(n, entry["in_progress"]) if r is not None]
    picked = await _pick(ch, day, params, histograms, wanted)
    windows = [conversion_window_ms(stage) for stage in request.stages]
    for entry in entries:
        key = (entry["seg"], entry["stage"], entry["d"])
        ranks = wanted.get(key)
        entry["median_ms"], entry["p90_ms"] = (
            (picked[(key, ranks[0])], picked[(key, ranks[1])]) if ranks else (None, None)
        )
        n = waits.get(key, 0)
        if daily or n + entry["in_progress"] == 0:
            entry["median_bounds_ms"] = None  # the daily series carries no targets
        else:
            # With nobody in progress both ranks are the median's, which is picked.
            lowest, highest = _median_ranks(n, entry["in_progress"])
            entry["median_bounds_ms"] = (
                0 if lowest is None else picked[(key, lowest)],
                windows[entry["stage"]] if highest is None else picked[(key, highest)],
            )
        by_touchpoint, by_channel = sources.get((entry["seg"], entry["stage"]), ({}, {}))
        entry["touchpoints"] = (list(by_touchpoint), list(by_touchpoint.values()))
        entry["channels"] = (list(by_channel), list(by_channel.values()))
    return entries, transitions, sentiments


def _header(request: KpiRequest) -> KpiHeader:
    return {
        "map": {"name": request.journey_map.name, "version": request.map_version},
        "window": {"from": request.first_day.isoformat(), "to": request.last_day.isoformat()},
        "as_of": iso(request.now),
        "rebuilding": request.rebuilding,
    }


def _empty_stage() -> _RawStage:
    return {
        "reached": 0,
        "entered": 0,
        "converted": 0,
        "dropped": 0,
        "in_progress": 0,
        "median_ms": None,
        "p90_ms": None,
        "median_bounds_ms": None,
        "touchpoints": {},
        "channels": {},
        "regressions_into": 0,
        "skips_over": 0,
        "repeats": 0,
        "sentiment": {"positive": 0, "neutral": 0, "negative": 0},
    }


def _ratio(numerator: int, denominator: int) -> float | None:
    """Not rounded: judgements are made on exact values (docs/kpis.md), and the API shows what is judged."""
    return None if denominator == 0 else numerator / denominator


def _ranked(counts: dict[str, int]) -> list[tuple[str, int]]:
    """The TOP largest counts, largest first (equal counts: by name)."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]


def _top_touchpoints(counts: dict[str, int]) -> list[TouchpointCount]:
    return [{"touchpoint": key, "customers": value} for key, value in _ranked(counts)]


def _top_channels(counts: dict[str, int]) -> list[ChannelCount]:
    return [{"channel": key, "customers": value} for key, value in _ranked(counts)]


def _exact(target: float) -> Fraction:
    """The decimal the map's author wrote (``str`` of the float gives it back), exactly."""
    return Fraction(str(target))


def outcome(goal: Fraction, lowest: Fraction, highest: Fraction, higher_is_better: bool) -> tuple[str, Fraction | None]:
    """Judge a metric whose final value lies in [lowest, highest] once every undecided customer is decided:
    ``met`` when even the worst case meets the goal, ``below_target`` when even the best case misses it,
    ``undecided`` otherwise; with the shortfall that is certain (relative to the goal, from the best case)."""
    worst, best = (lowest, highest) if higher_is_better else (highest, lowest)
    meets = (lambda v: v >= goal) if higher_is_better else (lambda v: v <= goal)
    if meets(worst):
        return "met", Fraction(0)
    if not meets(best):
        return "below_target", abs(goal - best) / goal if goal else Fraction(1)
    return "undecided", None


def _check(
    metric: str, target: float, bounds: tuple[Fraction, Fraction] | None, actual: float | None, higher_is_better: bool
) -> TargetCheck:
    """``metric`` against ``target`` once its final value is known to lie in ``bounds`` (None: no data)."""
    if bounds is None:
        return {
            "metric": metric,
            "target": target,
            "actual": None,
            "lowest": None,
            "highest": None,
            "shortfall": None,
            "status": "no_data",
        }
    lowest, highest = bounds
    status, short = outcome(_exact(target), lowest, highest, higher_is_better=higher_is_better)
    return {
        "metric": metric,
        "target": target,
        "actual": actual,
        "lowest": float(lowest),
        "highest": float(highest),
        "shortfall": None if short is None else float(short),
        "status": status,
    }


def _judge(stage: Stage, raw: _RawStage, last: bool) -> tuple[str, list[TargetCheck]]:
    """Each target metric judged on what is decided (docs/kpis.md, Targets): exact values and exact bounds,
    never a rate of the decided alone — with a 30-day window nobody entered in the last 30 days can have
    dropped yet, so that rate alone reads 100 % on the fast converters (survivorship)."""
    target = stage.target
    if target is None or (target.conversion_rate is None and target.median_days_to_convert is None):
        return "no_target", []
    converted, dropped, in_progress = raw["converted"], raw["dropped"], raw["in_progress"]
    entered = converted + dropped + in_progress
    checks = []
    if target.conversion_rate is not None:
        rates = None
        if not (last or entered == 0):
            rates = Fraction(converted, entered), Fraction(converted + in_progress, entered)
        actual = _ratio(converted, converted + dropped)
        checks.append(_check("conversion_rate", target.conversion_rate, rates, actual, higher_is_better=True))
    if target.median_days_to_convert is not None:
        bounds = raw["median_bounds_ms"]
        if bounds is None and raw["median_ms"] is not None and not in_progress:
            bounds = (raw["median_ms"], raw["median_ms"])
        elif bounds is None and (raw["median_ms"] is not None or in_progress):
            bounds = (0, conversion_window_ms(stage))  # the daily series does not rank the bounds: the loosest
        days = None if last or bounds is None else (Fraction(bounds[0], DAY_MS), Fraction(bounds[1], DAY_MS))
        actual = None if raw["median_ms"] is None else float(Fraction(raw["median_ms"], DAY_MS))
        checks.append(
            _check("median_days_to_convert", target.median_days_to_convert, days, actual, higher_is_better=False)
        )
    statuses = {c["status"] for c in checks}
    for status in ("below_target", "undecided", "met"):
        if status in statuses:
            return status, checks
    return "no_data", checks


def _shape_stage(stage: Stage, index: int, last: bool, raw: _RawStage) -> StageKpis:
    decided = raw["converted"] + raw["dropped"]
    entered = decided + raw["in_progress"]
    conversion_rate = None if last else _ratio(raw["converted"], decided)
    status, checks = _judge(stage, raw, last)

    def bounds(lowest: int, highest: int) -> RateBounds | None:
        return None if last or entered == 0 else {"lowest": lowest / entered, "highest": highest / entered}

    return {
        "id": stage.id,
        "name": stage.name,
        "index": index,
        "reached": raw["reached"],
        "entered": raw["entered"],
        "converted": None if last else raw["converted"],
        "dropped": None if last else raw["dropped"],
        "in_progress": None if last else raw["in_progress"],
        "decided_share": None if last else _ratio(decided, entered),
        "conversion_rate": conversion_rate,
        "conversion_rate_bounds": bounds(raw["converted"], raw["converted"] + raw["in_progress"]),
        "converted_of_entered": None if last else _ratio(raw["converted"], raw["entered"]),
        "drop_off_rate": None if last else _ratio(raw["dropped"], decided),
        "drop_off_rate_bounds": bounds(raw["dropped"], raw["dropped"] + raw["in_progress"]),
        "conversion_window_days": stage.conversion_window_days,
        "time_to_next_seconds": {
            "median": None if raw["median_ms"] is None else raw["median_ms"] / 1000,
            "p90": None if raw["p90_ms"] is None else raw["p90_ms"] / 1000,
        },
        "regressions_into": raw["regressions_into"],
        "skips_over": raw["skips_over"],
        "repeats": raw["repeats"],
        "sentiment": raw["sentiment"],
        "top_touchpoints": _top_touchpoints(raw["touchpoints"]),
        "top_channels": _top_channels(raw["channels"]),
        "target": None if stage.target is None else stage.target.model_dump(exclude_none=True),
        "status": status,
        "targets": checks,
    }


def _day_of(shaped: StageKpis) -> DailyStageKpis:
    """A stage's KPIs on one day: the whole-window shape without name, index, targets, tops and window."""
    return {
        "id": shaped["id"],
        "reached": shaped["reached"],
        "entered": shaped["entered"],
        "converted": shaped["converted"],
        "dropped": shaped["dropped"],
        "in_progress": shaped["in_progress"],
        "decided_share": shaped["decided_share"],
        "conversion_rate": shaped["conversion_rate"],
        "conversion_rate_bounds": shaped["conversion_rate_bounds"],
        "converted_of_entered": shaped["converted_of_entered"],
        "drop_off_rate": shaped["drop_off_rate"],
        "drop_off_rate_bounds": shaped["drop_off_rate_bounds"],
        "time_to_next_seconds": shaped["time_to_next_seconds"],
        "regressions_into": shaped["regressions_into"],
        "skips_over": shaped["skips_over"],
        "repeats": shaped["repeats"],
        "sentiment": shaped["sentiment"],
        "status": shaped["status"],
    }


def _bottleneck(stages: list[StageKpis]) -> Bottleneck | None:
    """The stage furthest below one of its targets (largest relative shortfall; the earlier stage on a tie)."""
    worst: Bottleneck | None = None
    for stage in stages:
        for check in stage["targets"]:
            shortfall = check["shortfall"]
            if shortfall and (worst is None or shortfall > (worst["shortfall"] or 0)):
                worst = {
                    "stage": stage["id"],
                    "metric": check["metric"],
                    "target": check["target"],
                    "actual": check["actual"],
                    "lowest": check["lowest"],
                    "highest": check["highest"],
                    "shortfall": shortfall,
                }
    return worst


_COUNTS: tuple[Literal["reached", "entered", "converted", "dropped", "in_progress"], ...] = (
    "reached",
    "entered",
    "converted",
    "dropped",
    "in_progress",
)


def _fold(request: KpiRequest, entries, transitions, sentiments, keyed, flows=None) -> dict[Any, list[_RawStage]]:
    """Raw rows → per key (segment, or segment and day) a list of raw stage dicts; stage-to-stage move
    counts per key go into ``flows`` when given."""
    flows = {} if flows is None else flows
    n = len(request.order)
    out: dict[Any, list[_RawStage]] = {}

    def stages_of(key: Any) -> list[_RawStage]:
        if key not in out:
            out[key] = [_empty_stage() for _ in range(n)]
        return out[key]

    for row in entries:
        raw = stages_of(keyed(row))[row["stage"]]
        for field in _COUNTS:
            raw[field] += row[field]
        if row["converted"]:  # the nearest-rank median and p90 of the waits of converted customers
            raw["median_ms"], raw["p90_ms"] = row["median_ms"], row["p90_ms"]
        raw["median_bounds_ms"] = row["median_bounds_ms"]
        raw["touchpoints"] = {k: v for k, v in zip(*row["touchpoints"]) if v}
        raw["channels"] = {k: v for k, v in zip(*row["channels"]) if v}
    for *head, to_stage, from_stage, kind, repeat, count in transitions:
        stages = stages_of(keyed(head))
        pair = (from_stage, to_stage, kind)
        moves = flows.setdefault(keyed(head), {})
        moves[pair] = moves.get(pair, 0) + count
        if kind == "regression":
            stages[to_stage]["regressions_into"] += count
        if kind == "skip":
            for over in range(from_stage + 1, to_stage):
                stages[over]["skips_over"] += count
        if repeat:
            stages[to_stage]["repeats"] += count
    for *head, stage, sentiment, count in sentiments:
        stages_of(keyed(head))[stage]["sentiment"][sentiment] += count
    return out


async def stage_kpis(ch: ClickHouse, request: KpiRequest) -> KpiAnswer:
    """KPIs per stage for each requested segment over the whole window."""
    entries, transitions, sentiments = await _collect(ch, request, daily=False)

    def keyed(row: Any) -> str:
        return row["seg"] if isinstance(row, dict) else row[0]

    flows: dict[Any, dict[tuple[int, int, str], int]] = {}
    folded = _fold(request, entries, transitions, sentiments, keyed, flows)
    wanted = request.segments if request.segments is not None else [ALL]
    n = len(request.order)
    results: list[SegmentKpis] = []
    for segment in wanted:
        raws = folded.get(segment) or [_empty_stage() for _ in range(n)]
        stages = [_shape_stage(s, i, i == n - 1, raws[i]) for i, s in enumerate(request.stages)]
        moves: list[Transition] = [
            {"from": None if f < 0 else request.order[f], "to": request.order[t], "kind": kind, "count": count}
            for (f, t, kind), count in sorted(flows.get(segment, {}).items())
        ]
        results.append(
            {"segment": segment or None, "stages": stages, "transitions": moves, "bottleneck": _bottleneck(stages)}
        )
    return {**_header(request), "segments": results}


async def daily_kpis(ch: ClickHouse, request: KpiRequest) -> DailyKpiAnswer:
    """The same KPIs day by day (the day a customer entered the stage, or the day a move happened)."""
    entries, transitions, sentiments = await _collect(ch, request, daily=True)

    def keyed(row: Any) -> tuple[str, date]:
        return (row["seg"], row["d"]) if isinstance(row, dict) else (row[0], row[1])

    folded = _fold(request, entries, transitions, sentiments, keyed)
    wanted = request.segments if request.segments is not None else [ALL]
    n = len(request.order)
    days = [request.first_day + timedelta(days=k) for k in range((request.last_day - request.first_day).days + 1)]
    results: list[DailySegmentKpis] = []
    for segment in wanted:
        # Entries before the window land on earlier days: they are the "reached" baseline.
        reached = [
            sum(raws[i]["reached"] for (seg, day), raws in folded.items() if seg == segment and day < request.first_day)
            for i in range(n)
        ]
        series: list[DayKpis] = []
        for day in days:
            raws = folded.get((segment, day)) or [_empty_stage() for _ in range(n)]
            stages = []
            for i, stage in enumerate(request.stages):
                reached[i] += raws[i]["entered"]
                raws[i]["reached"] = reached[i]
                stages.append(_day_of(_shape_stage(stage, i, i == n - 1, raws[i])))
            series.append({"date": day.isoformat(), "stages": stages})
        results.append({"segment": segment or None, "days": series})
    return {**_header(request), "segments": results}


CSV_COLUMNS = (
    "segment",
    "stage",
    "reached",
    "entered",
    "converted",
    "dropped",
    "in_progress",
    "conversion_rate",
    "converted_of_entered",
    "drop_off_rate",
    "median_seconds_to_next",
    "p90_seconds_to_next",
    "regressions_into",
    "skips_over",
    "repeats",
    "sentiment_positive",
    "sentiment_neutral",
    "sentiment_negative",
    "status",
)


def _csv_cells(segment: str | None, stage: Mapping[str, Any]) -> list[Any]:
    return [
        segment or "(all customers)",
        stage["id"],
        stage["reached"],
        stage["entered"],
        stage["converted"],
        stage["dropped"],
        stage["in_progress"],
        stage["conversion_rate"],
        stage["converted_of_entered"],
        stage["drop_off_rate"],
        stage["time_to_next_seconds"]["median"],
        stage["time_to_next_seconds"]["p90"],
        stage["regressions_into"],
        stage["skips_over"],
        stage["repeats"],
        stage["sentiment"]["positive"],
        stage["sentiment"]["neutral"],
        stage["sentiment"]["negative"],
        stage.get("status", ""),
    ]


def to_csv(result: Mapping[str, Any]) -> str:
    """One row per segment and stage (and day, for the daily series); empty cells where a KPI has no value."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    daily = any("days" in s for s in result["segments"])
    writer.writerow((("date",) if daily else ()) + CSV_COLUMNS + (() if daily else ("top_touchpoints", "top_channels")))
    for seg in result["segments"]:
        if daily:
            for day in seg["days"]:
                for stage in day["stages"]:
                    writer.writerow([day["date"], *_csv_cells(seg["segment"], stage)])
        else:
            for stage in seg["stages"]:
                tops = [
                    "; ".join(f"{t['touchpoint']}={t['customers']}" for t in stage["top_touchpoints"]),
                    "; ".join(f"{t['channel']}={t['customers']}" for t in stage["top_channels"]),
                ]
                writer.writerow(_csv_cells(seg["segment"], stage) + tops)
    return out.getvalue()
