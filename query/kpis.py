"""Stage KPIs per customer segment, from the per-customer stage state (never from a rescan of events).

Every number follows the definitions in docs/kpis.md; tests compare them with a brute-force computation over
raw events. The queries read ``stage_state`` (one row per stitched customer and map version), never events:

* whole window (:func:`stage_kpis`): one pass per customer row for the per-stage figures, moves and
  sentiments, and one for what brought customers into each stage, side by side;
* day by day (:func:`daily_kpis`): entries grouped by entry day, moves by the day they happened, sentiment
  touches by their day — three queries, because each groups by a different day.

Every user-supplied value (project, map, segment, dates) is a bound parameter; the SQL text only ever
contains numbers we computed (stage count).
"""

from __future__ import annotations

import asyncio
import csv
import io
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from journeys.clickhouse import ClickHouse
from journeys.maps import JourneyMap, Stage

DAY_MS = 86_400_000
TOP = 5
ALL = ""  # the segment key of "all customers"

_DAILY_ENTRIES_SQL = """
SELECT * EXCEPT (waits) FROM (  -- the sorted waits stay in ClickHouse
SELECT seg, stage, toDate(fromUnixTimestamp64Milli(e, 'UTC')) AS day,
       countIf(e < {{to_ms:Int64}}) AS reached,
       countIf(in_w) AS entered,
       countIf(in_w AND conv) AS converted,
       countIf(in_w AND NOT conv AND closed) AS dropped,
       countIf(in_w AND NOT conv AND NOT closed) AS in_progress,
       arraySort(groupArrayIf(nx - e, in_w AND conv)) AS waits,
       waits[intDiv(length(waits) + 1, 2)] AS median_ms,
       waits[intDiv(9 * length(waits) + 9, 10)] AS p90_ms,
       sumMapIf([tp], [toUInt64(1)], in_w) AS touchpoints,
       sumMapIf([chn], [toUInt64(1)], in_w) AS channels
FROM (
    SELECT {segs}, stage,
           toUnixTimestamp64Milli(entered[stage + 1]) AS e,
           toUnixTimestamp64Milli(next_at[stage + 1]) AS nx,
           e >= {{from_ms:Int64}} AND e < {{to_ms:Int64}} AS in_w,
           nx > 0 AND nx - e <= {{windows:Array(Int64)}}[stage + 1] AS conv,
           e + {{windows:Array(Int64)}}[stage + 1] <= {{now_ms:Int64}} AS closed,
           toString(entry_touchpoint[stage + 1]) AS tp,
           toString(entry_channel[stage + 1]) AS chn
    FROM stage_state FINAL
    ARRAY JOIN range({stages}) AS stage
    WHERE {where}
)
ARRAY JOIN segs AS seg
WHERE e > 0 AND e < {{to_ms:Int64}}
GROUP BY seg, stage, day
)
"""

# The whole-window KPIs: one row per customer (no row per stage), per-stage figures as arrays summed
# element-wise (-ForEach); each customer's moves and sentiment touches in the window packed into integer
# keys and summed with sumMap: (from + 1, to, kind, repeat) and (stage, sentiment). The nearest-rank
# median and p90 are quantileExactLow at 0.5 and 0.9 - 1e-10: that is the element of rank ceil(q * n)
# (at exactly 0.9, floating point makes 0.9 * n land just above an integer when n is a multiple of 10).
_SUMMARY_SQL = """
SELECT seg,
       sumForEach(arrayMap(e -> toUInt64(e > 0 AND e < {{to_ms:Int64}}), es)) AS reached,
       sumForEach(arrayMap(i -> toUInt64(i), in_w)) AS entered,
       sumForEach(arrayMap((i, c) -> toUInt64(i AND c), in_w, conv)) AS converted,
       sumForEach(arrayMap((i, c, cl) -> toUInt64(i AND NOT c AND cl), in_w, conv, closed)) AS dropped,
       sumForEach(arrayMap((i, c, cl) -> toUInt64(i AND NOT c AND NOT cl), in_w, conv, closed)) AS in_progress,
       quantilesExactLowIfForEach(0.5, 0.8999999999)(waits, arrayMap((i, c) -> i AND c, in_w, conv)) AS wait_quantiles,
       sumMap(moves, arrayWithConstant(length(moves), toUInt64(1))) AS move_counts,
       sumMap(feelings, arrayWithConstant(length(feelings), toUInt64(1))) AS feeling_counts
FROM (
    SELECT segs, es, moves, feelings,
           arrayMap(e -> e > 0 AND e >= {{from_ms:Int64}} AND e < {{to_ms:Int64}}, es) AS in_w,
           arrayMap((e, x, w) -> x > 0 AND x - e <= w, es, nxs, {{windows:Array(Int64)}}) AS conv,
           arrayMap((e, w) -> e + w <= {{now_ms:Int64}}, es, {{windows:Array(Int64)}}) AS closed,
           arrayMap((e, x) -> x - e, es, nxs) AS waits
    FROM (
        SELECT {segs},
               arrayMap(x -> toUnixTimestamp64Milli(x), entered) AS es,
               arrayMap(x -> toUnixTimestamp64Milli(x), next_at) AS nxs,
               arrayFilter(
                   (key, t) -> t >= {{from_ms:Int64}} AND t < {{to_ms:Int64}},
                   arrayMap((f, t, k, r) -> toUInt64(((f + 1) * 1000 + t) * 100 + CAST(k, 'Int8') * 10 + r),
                            t_from, t_to, t_kind, t_repeat),
                   arrayMap(x -> toUnixTimestamp64Milli(x), t_time)) AS moves,
               arrayFilter(
                   (key, t) -> t >= {{from_ms:Int64}} AND t < {{to_ms:Int64}},
                   arrayMap((st, sv) -> toUInt64(st * 10 + CAST(sv, 'Int8')), s_stage, s_sentiment),
                   arrayMap(x -> toUnixTimestamp64Milli(x), s_time)) AS feelings
        FROM stage_state FINAL
        WHERE {where}
    )
)
ARRAY JOIN segs AS seg
GROUP BY seg
"""

# What brought the customers who entered a stage in the window: one row per entry, grouped.
_ENTRY_SOURCES_SQL = """
SELECT seg, stage, tp, chn, count()
FROM (
    SELECT {segs}, stage - 1 AS stage, toString(tp) AS tp, toString(chn) AS chn
    FROM stage_state FINAL
    ARRAY JOIN arrayEnumerate(entered) AS stage, entered AS entry, entry_touchpoint AS tp, entry_channel AS chn
    WHERE {where}
      AND toUnixTimestamp64Milli(entry) > 0
      AND toUnixTimestamp64Milli(entry) >= {{from_ms:Int64}} AND toUnixTimestamp64Milli(entry) < {{to_ms:Int64}}
)
ARRAY JOIN segs AS seg
GROUP BY seg, stage, tp, chn
"""
_KINDS = {1: "first", 2: "forward", 3: "skip", 4: "regression"}
_SENTIMENT_CODES = {1: "positive", 2: "neutral", 3: "negative"}

_DAILY_TRANSITIONS_SQL = """
SELECT seg, toDate(tt) AS day, to_stage, from_stage, kind, repeat, count()
FROM (
    SELECT {segs}, tt, to_stage, from_stage, toString(k) AS kind, repeat
    FROM stage_state FINAL
    ARRAY JOIN t_time AS tt, t_to AS to_stage, t_from AS from_stage, t_kind AS k, t_repeat AS repeat
    WHERE {where}
      AND toUnixTimestamp64Milli(tt) >= {{from_ms:Int64}} AND toUnixTimestamp64Milli(tt) < {{to_ms:Int64}}
)
ARRAY JOIN segs AS seg
GROUP BY seg, day, to_stage, from_stage, kind, repeat
"""

_DAILY_SENTIMENT_SQL = """
SELECT seg, toDate(tt) AS day, stage, sentiment, count()
FROM (
    SELECT {segs}, st AS tt, stage, toString(sv) AS sentiment
    FROM stage_state FINAL
    ARRAY JOIN s_time AS st, s_stage AS stage, s_sentiment AS sv
    WHERE {where}
      AND toUnixTimestamp64Milli(st) >= {{from_ms:Int64}} AND toUnixTimestamp64Milli(st) < {{to_ms:Int64}}
)
ARRAY JOIN segs AS seg
GROUP BY seg, day, stage, sentiment
"""


@dataclass(frozen=True)
class KpiRequest:
    """A validated KPI question: which map version, which segments, which days, evaluated at ``now``."""

    project_id: str
    journey_map: JourneyMap
    map_version: int
    order: list[str]
    segments: list[str] | None  # None: all customers only; otherwise these segment names ("" = all)
    first_day: date
    last_day: date
    now: datetime

    @property
    def from_ms(self) -> int:
        return _day_ms(self.first_day)

    @property
    def to_ms(self) -> int:
        return _day_ms(self.last_day) + DAY_MS

    @property
    def stages(self) -> list[Stage]:
        by_id = {s.id: s for s in self.journey_map.stages}
        return [by_id[s] for s in self.order]


def _day_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)


def _render(template: str, request: KpiRequest) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {
        "project_id": request.project_id,
        "map_name": request.journey_map.name,
        "map_version": request.map_version,
        "from_ms": request.from_ms,
        "to_ms": request.to_ms,
        "now_ms": int(request.now.timestamp() * 1000),
        "windows": [int(round(s.conversion_window_days * DAY_MS)) for s in request.stages],
    }
    where = (
        "project_id = {project_id:String} AND map_name = {map_name:String} AND map_version = {map_version:UInt32}"
    )
    segments = request.segments
    if segments is None:
        segs = "[''] AS segs"
    else:
        named = [s for s in segments if s != ALL]
        params["segments"] = named
        if ALL in segments:
            segs = "arrayPushFront(arrayIntersect(segments, {segments:Array(String)}), '') AS segs"
        else:
            segs = "arrayIntersect(segments, {segments:Array(String)}) AS segs"
            where += " AND hasAny(segments, {segments:Array(String)})"
    sql = template.format(
        stages=len(request.order),
        where=where,
        segs=segs,  # the segment keys each customer row counts under
    )
    return sql, params


async def _daily(ch: ClickHouse, request: KpiRequest) -> tuple[list[dict[str, Any]], list[tuple], list[tuple]]:
    """(entries, transitions, sentiments) rows by day, as :func:`_fold` takes them. An entry belongs to the
    day of `e`; entries before the window (reached only) fall on earlier days, kept apart by the caller."""
    (columns, entry_rows), (_, transitions), (_, sentiments) = await asyncio.gather(
        *(ch.query(*_render(sql, request)) for sql in (_DAILY_ENTRIES_SQL, _DAILY_TRANSITIONS_SQL, _DAILY_SENTIMENT_SQL))
    )
    return [dict(zip(columns, row)) for row in entry_rows], transitions, sentiments


def _header(request: KpiRequest) -> dict[str, Any]:
    return {
        "map": {"name": request.journey_map.name, "version": request.map_version},
        "window": {"from": request.first_day.isoformat(), "to": request.last_day.isoformat()},
        "as_of": request.now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


def _empty_stage() -> dict[str, Any]:
    return {
        "reached": 0,
        "entered": 0,
        "converted": 0,
        "dropped": 0,
        "in_progress": 0,
        "median_ms": None,
        "p90_ms": None,
        "touchpoints": {},
        "channels": {},
        "regressions_into": 0,
        "skips_over": 0,
        "repeats": 0,
        "sentiment": {"positive": 0, "neutral": 0, "negative": 0},
    }


def _ratio(numerator: int, denominator: int) -> float | None:
    return None if denominator == 0 else round(numerator / denominator, 6)


def _top(counts: dict[str, int], label: str) -> list[dict[str, Any]]:
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]
    return [{label: key, "customers": value} for key, value in ranked]


def _judge(stage: Stage, conversion_rate: float | None, median_days: float | None) -> tuple[str, list[dict[str, Any]]]:
    """Target vs actual: each target metric met or short, and by how much (relative shortfall)."""
    target = stage.target
    if target is None or (target.conversion_rate is None and target.median_days_to_convert is None):
        return "no_target", []
    checks = []
    if target.conversion_rate is not None:
        shortfall = None if conversion_rate is None else max(0.0, (target.conversion_rate - conversion_rate) / target.conversion_rate)
        checks.append({"metric": "conversion_rate", "target": target.conversion_rate, "actual": conversion_rate, "shortfall": shortfall})
    if target.median_days_to_convert is not None:
        goal = target.median_days_to_convert
        shortfall = None if median_days is None else max(0.0, (median_days - goal) / goal)
        checks.append({"metric": "median_days_to_convert", "target": goal, "actual": median_days, "shortfall": shortfall})
    for check in checks:
        check["status"] = "no_data" if check["shortfall"] is None else "below_target" if check["shortfall"] > 0 else "met"
        if check["shortfall"] is not None:
            check["shortfall"] = round(check["shortfall"], 6)
    statuses = {c["status"] for c in checks}
    status = "below_target" if "below_target" in statuses else "no_data" if statuses == {"no_data"} else "met"
    return status, checks


def _shape_stage(stage: Stage, index: int, last: bool, raw: dict[str, Any]) -> dict[str, Any]:
    decided = raw["converted"] + raw["dropped"]
    conversion_rate = None if last else _ratio(raw["converted"], decided)
    median_days = None if raw["median_ms"] is None else round(raw["median_ms"] / DAY_MS, 6)
    status, checks = _judge(stage, conversion_rate, median_days)
    return {
        "id": stage.id,
        "name": stage.name,
        "index": index,
        "reached": raw["reached"],
        "entered": raw["entered"],
        "converted": None if last else raw["converted"],
        "dropped": None if last else raw["dropped"],
        "in_progress": None if last else raw["in_progress"],
        "conversion_rate": conversion_rate,
        "converted_of_entered": None if last else _ratio(raw["converted"], raw["entered"]),
        "drop_off_rate": None if last else _ratio(raw["dropped"], decided),
        "conversion_window_days": stage.conversion_window_days,
        "time_to_next_seconds": {
            "median": None if raw["median_ms"] is None else raw["median_ms"] / 1000,
            "p90": None if raw["p90_ms"] is None else raw["p90_ms"] / 1000,
        },
        "regressions_into": raw["regressions_into"],
        "skips_over": raw["skips_over"],
        "repeats": raw["repeats"],
        "sentiment": raw["sentiment"],
        "top_touchpoints": _top(raw["touchpoints"], "touchpoint"),
        "top_channels": _top(raw["channels"], "channel"),
        "target": None if stage.target is None else stage.target.model_dump(exclude_none=True),
        "status": status,
        "targets": checks,
    }


def _bottleneck(stages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The stage furthest below one of its targets (largest relative shortfall; the earlier stage on a tie)."""
    worst = None
    for stage in stages:
        for check in stage["targets"]:
            if check["shortfall"] and (worst is None or check["shortfall"] > worst["shortfall"]):
                worst = {"stage": stage["id"], **{k: check[k] for k in ("metric", "target", "actual", "shortfall")}}
    return worst


def _fold(request: KpiRequest, entries, transitions, sentiments, keyed, flows=None) -> dict[Any, list[dict[str, Any]]]:  # type: ignore[no-untyped-def]
    """Raw rows → per key (segment, or segment and day) a list of raw stage dicts; stage-to-stage move
    counts per key go into ``flows`` when given."""
    flows = {} if flows is None else flows
    n = len(request.order)
    out: dict[Any, list[dict[str, Any]]] = {}

    def stages_of(key: Any) -> list[dict[str, Any]]:
        if key not in out:
            out[key] = [_empty_stage() for _ in range(n)]
        return out[key]

    for row in entries:
        raw = stages_of(keyed(row))[row["stage"]]
        for field in ("reached", "entered", "converted", "dropped", "in_progress"):
            raw[field] += row[field]
        if row["converted"]:  # the nearest-rank median and p90 of the waits of converted customers
            raw["median_ms"], raw["p90_ms"] = row["median_ms"], row["p90_ms"]
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


async def _summary(ch: ClickHouse, request: KpiRequest) -> tuple[list[dict[str, Any]], list[tuple], list[tuple]]:
    """(entries, transitions, sentiments) rows for the whole window, as :func:`_fold` takes them."""
    summary_sql, params = _render(_SUMMARY_SQL, request)
    sources_sql, _ = _render(_ENTRY_SOURCES_SQL, request)
    (columns, rows), (_, source_rows) = await asyncio.gather(
        ch.query(summary_sql, params), ch.query(sources_sql, params)
    )
    sources: dict[tuple[str, int], tuple[dict[str, int], dict[str, int]]] = {}
    for seg, stage, touchpoint, channel, count in source_rows:
        by_touchpoint, by_channel = sources.setdefault((seg, stage), ({}, {}))
        by_touchpoint[touchpoint] = by_touchpoint.get(touchpoint, 0) + count
        by_channel[channel] = by_channel.get(channel, 0) + count
    entries, transitions, sentiments = [], [], []
    for row in rows:
        summary = dict(zip(columns, row))
        seg = summary["seg"]
        for stage in range(len(request.order)):
            by_touchpoint, by_channel = sources.get((seg, stage), ({}, {}))
            median_ms, p90_ms = summary["wait_quantiles"][stage]
            entries.append(
                {
                    "seg": seg,
                    "stage": stage,
                    **{f: summary[f][stage] for f in ("reached", "entered", "converted", "dropped", "in_progress")},
                    "median_ms": int(median_ms),
                    "p90_ms": int(p90_ms),
                    "touchpoints": (list(by_touchpoint), list(by_touchpoint.values())),
                    "channels": (list(by_channel), list(by_channel.values())),
                }
            )
        for key, count in zip(*summary["move_counts"]):
            repeat, kind, pair = key % 10, key // 10 % 10, key // 100
            transitions.append((seg, pair % 1000, pair // 1000 - 1, _KINDS[kind], repeat, count))
        for key, count in zip(*summary["feeling_counts"]):
            sentiments.append((seg, key // 10, _SENTIMENT_CODES[key % 10], count))
    return entries, transitions, sentiments


async def stage_kpis(ch: ClickHouse, request: KpiRequest) -> dict[str, Any]:
    """KPIs per stage for each requested segment over the whole window."""
    entries, transitions, sentiments = await _summary(ch, request)

    def keyed(row: Any) -> str:
        return row["seg"] if isinstance(row, dict) else row[0]

    flows: dict[Any, dict[tuple[int, int, str], int]] = {}
    folded = _fold(request, entries, transitions, sentiments, keyed, flows)
    wanted = request.segments if request.segments is not None else [ALL]
    n = len(request.order)
    results = []
    for segment in wanted:
        raws = folded.get(segment) or [_empty_stage() for _ in range(n)]
        stages = [_shape_stage(s, i, i == n - 1, raws[i]) for i, s in enumerate(request.stages)]
        moves = [
            {"from": None if f < 0 else request.order[f], "to": request.order[t], "kind": kind, "count": count}
            for (f, t, kind), count in sorted(flows.get(segment, {}).items())
        ]
        results.append(
            {"segment": segment or None, "stages": stages, "transitions": moves, "bottleneck": _bottleneck(stages)}
        )
    return {**_header(request), "segments": results}


async def daily_kpis(ch: ClickHouse, request: KpiRequest) -> dict[str, Any]:
    """The same KPIs day by day (the day a customer entered the stage, or the day a move happened)."""
    entries, transitions, sentiments = await _daily(ch, request)

    def keyed(row: Any) -> tuple[str, date]:
        return (row["seg"], row["day"]) if isinstance(row, dict) else (row[0], row[1])

    folded = _fold(request, entries, transitions, sentiments, keyed)
    wanted = request.segments if request.segments is not None else [ALL]
    n = len(request.order)
    days = [request.first_day + timedelta(days=k) for k in range((request.last_day - request.first_day).days + 1)]
    results = []
    for segment in wanted:
        # Entries before the window land on earlier days: they are the "reached" baseline.
        reached = [
            sum(raws[i]["reached"] for (seg, day), raws in folded.items() if seg == segment and day < request.first_day)
            for i in range(n)
        ]
        series = []
        for day in days:
            raws = folded.get((segment, day)) or [_empty_stage() for _ in range(n)]
            stages = []
            for i, stage in enumerate(request.stages):
                reached[i] += raws[i]["entered"]
                raws[i]["reached"] = reached[i]
                shaped = _shape_stage(stage, i, i == n - 1, raws[i])
                for noise in ("name", "index", "target", "targets", "top_touchpoints", "top_channels", "conversion_window_days"):
                    shaped.pop(noise)
                stages.append(shaped)
            series.append({"date": day.isoformat(), "stages": stages})
        results.append({"segment": segment or None, "days": series})
    return {**_header(request), "segments": results}


CSV_COLUMNS = (
    "segment", "stage", "reached", "entered", "converted", "dropped", "in_progress", "conversion_rate",
    "converted_of_entered", "drop_off_rate", "median_seconds_to_next", "p90_seconds_to_next", "regressions_into",
    "skips_over", "repeats", "sentiment_positive", "sentiment_neutral", "sentiment_negative", "status",
)


def _csv_cells(segment: str | None, stage: dict[str, Any]) -> list[Any]:
    return [
        segment or "(all customers)", stage["id"], stage["reached"], stage["entered"], stage["converted"],
        stage["dropped"], stage["in_progress"], stage["conversion_rate"], stage["converted_of_entered"],
        stage["drop_off_rate"], stage["time_to_next_seconds"]["median"], stage["time_to_next_seconds"]["p90"],
        stage["regressions_into"], stage["skips_over"], stage["repeats"], stage["sentiment"]["positive"],
        stage["sentiment"]["neutral"], stage["sentiment"]["negative"], stage.get("status", ""),
    ]


def to_csv(result: dict[str, Any]) -> str:
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
