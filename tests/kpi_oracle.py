"""Brute-force stage KPIs in plain Python, straight from docs/kpis.md, over raw events.

Independent of the product's KPI path (stage facts, SQL aggregation): it walks each customer's full
journey (query.journey.build_journey, the reference per-customer semantics) and counts by the definitions.
Segment membership comes from the generator's ground truth (traits and first channel), not from our facts
tables.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

from query.maps import SENTIMENTS, JourneyMap, Segment, segment_matches
from query.journey import CompiledMap, build_journey

DAY_MS = 86_400_000


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def _nearest_rank(values: list[int], q_num: int, q_den: int) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = -(-q_num * len(ordered) // q_den)  # ceil(q * n), exact in integers
    return ordered[rank - 1]


def oracle_kpis(
    customers: dict[str, list[dict[str, Any]]],
    facts: dict[str, dict[str, Any]],
    journey_map: JourneyMap,
    version: int,
    segments: list[Segment],
    wanted: list[str],
    first_day: date,
    last_day: date,
    now_ms: int,
) -> dict[str, list[dict[str, Any]]]:
    """Per wanted segment ("" = all customers), per stage: the KPI counts the API must report."""
    compiled = CompiledMap(journey_map, version)
    order = compiled.order
    windows = {s.id: int(round(s.conversion_window_days * DAY_MS)) for s in journey_map.stages}
    w_from = int(datetime(first_day.year, first_day.month, first_day.day, tzinfo=timezone.utc).timestamp() * 1000)
    w_to = w_from + ((last_day - first_day).days + 1) * DAY_MS
    member_of = {c: {""} | {s.name for s in segments if segment_matches(s, facts[c])} for c in customers}
    out: dict[str, list[dict[str, Any]]] = {}
    for seg in wanted:
        stages = []
        for i, stage in enumerate(order):
            k: dict[str, Any] = {
                "id": stage,
                "reached": 0,
                "entered": 0,
                "converted": 0,
                "dropped": 0,
                "in_progress": 0,
                "waits": [],
                "regressions_into": 0,
                "skips_over": 0,
                "repeats": 0,
                "sentiment": {"positive": 0, "neutral": 0, "negative": 0},
                "touchpoints": {},
                "channels": {},
            }
            for customer, events in customers.items():
                if seg not in member_of[customer]:
                    continue
                journey = build_journey(events, compiled)
                touches = journey["touchpoints"]
                entry = next((n for n, t in enumerate(touches) if t["stage"] == stage), None)
                for t in journey["transitions"]:
                    if not w_from <= _ms(t["time"]) < w_to:
                        continue
                    if t["to"] == stage and t["kind"] == "regression":
                        k["regressions_into"] += 1
                    if t["kind"] == "skip" and stage in t["skipped"]:
                        k["skips_over"] += 1
                    if t["to"] == stage and t["repeat"]:
                        k["repeats"] += 1
                for t in touches:
                    if t["stage"] == stage and t["sentiment"] in SENTIMENTS and w_from <= _ms(t["time"]) < w_to:
                        k["sentiment"][t["sentiment"]] += 1
                if entry is None:
                    continue
                entered = _ms(touches[entry]["time"])
                if entered >= w_to:
                    continue
                k["reached"] += 1
                if entered < w_from:
                    continue
                k["entered"] += 1
                tp, channel = touches[entry]["touchpoint"], touches[entry]["channel"]
                k["touchpoints"][tp] = k["touchpoints"].get(tp, 0) + 1
                k["channels"][channel] = k["channels"].get(channel, 0) + 1
                if i == len(order) - 1:
                    continue
                moved = next(
                    (_ms(t["time"]) for t in touches[entry + 1 :] if t["stage"] and compiled.index[t["stage"]] > i),
                    None,
                )
                if moved is not None and moved - entered <= windows[stage]:
                    k["converted"] += 1
                    k["waits"].append(moved - entered)
                elif entered + windows[stage] <= now_ms:
                    k["dropped"] += 1
                else:
                    k["in_progress"] += 1
            median, p90 = _nearest_rank(k["waits"], 1, 2), _nearest_rank(k["waits"], 9, 10)
            k["median_seconds"] = None if median is None else median / 1000
            k["p90_seconds"] = None if p90 is None else p90 / 1000
            k["judged"] = _judged(
                journey_map.stages[[s.id for s in journey_map.stages].index(stage)],
                k,
                windows[stage],
                last=i == len(order) - 1,
            )
            del k["waits"]
            stages.append(k)
        out[seg] = stages
    return out


def _judged(stage: Any, k: dict[str, Any], window_ms: int, last: bool) -> dict[str, Any]:
    """docs/kpis.md, Targets, by brute force: the final rate if every customer in progress dropped / every one
    converted; the final median if every one converted at once (0) / at the last moment (W) — by adding
    those waits and ranking, not by the product's rank arithmetic; each target met, below or undecided."""
    from fractions import Fraction

    c, d, p = k["converted"], k["dropped"], k["in_progress"]
    e = c + d + p
    out: dict[str, Any] = {"status": "no_target", "targets": {}}
    target = stage.target
    if target is None or (target.conversion_rate is None and target.median_days_to_convert is None):
        return out

    def verdict(goal: Fraction, worst: Fraction, best: Fraction, higher: bool) -> str:
        if (worst >= goal) if higher else (worst <= goal):
            return "met"
        if (best < goal) if higher else (best > goal):
            return "below_target"
        return "undecided"

    if target.conversion_rate is not None:
        if last or e == 0:
            out["targets"]["conversion_rate"] = ("no_data", None, None)
        else:
            lo, hi = Fraction(c, e), Fraction(c + p, e)
            status = verdict(Fraction(str(target.conversion_rate)), lo, hi, True)
            out["targets"]["conversion_rate"] = (status, float(lo), float(hi))
    if target.median_days_to_convert is not None:
        if last or (not k["waits"] and not p):
            out["targets"]["median_days_to_convert"] = ("no_data", None, None)
        else:
            lo = Fraction(_nearest_rank(k["waits"] + [0] * p, 1, 2), 86_400_000)  # type: ignore[arg-type]
            hi = Fraction(_nearest_rank(k["waits"] + [window_ms] * p, 1, 2), 86_400_000)  # type: ignore[arg-type]
            status = verdict(Fraction(str(target.median_days_to_convert)), hi, lo, False)
            out["targets"]["median_days_to_convert"] = (status, float(lo), float(hi))
    statuses = {t[0] for t in out["targets"].values()}
    out["status"] = next((s for s in ("below_target", "undecided", "met") if s in statuses), "no_data")
    return out


def api_view(result_segment: dict[str, Any]) -> list[dict[str, Any]]:
    """The API's stage KPIs in the oracle's shape, for an exact comparison."""
    view = []
    for s in result_segment["stages"]:
        last = s["converted"] is None
        view.append(
            {
                "id": s["id"],
                "reached": s["reached"],
                "entered": s["entered"],
                "converted": 0 if last else s["converted"],
                "dropped": 0 if last else s["dropped"],
                "in_progress": 0 if last else s["in_progress"],
                "regressions_into": s["regressions_into"],
                "skips_over": s["skips_over"],
                "repeats": s["repeats"],
                "sentiment": s["sentiment"],
                "touchpoints": {t["touchpoint"]: t["customers"] for t in s["top_touchpoints"]},
                "channels": {t["channel"]: t["customers"] for t in s["top_channels"]},
                "median_seconds": s["time_to_next_seconds"]["median"],
                "p90_seconds": s["time_to_next_seconds"]["p90"],
                "judged": {
                    "status": s["status"],
                    "targets": {t["metric"]: (t["status"], t["lowest"], t["highest"]) for t in s["targets"]},
                },
            }
        )
    return view


def top(counts: dict[str, int], n: int = 5) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n])


def oracle_transitions(
    customers: dict[str, list[dict[str, Any]]],
    facts: dict[str, dict[str, Any]],
    journey_map: JourneyMap,
    segments: list[Segment],
    wanted: list[str],
    first_day: date,
    last_day: date,
) -> dict[str, list[dict[str, Any]]]:
    """Per wanted segment: stage-to-stage moves in the window, counted by (from, to, kind)."""
    compiled = CompiledMap(journey_map, 1)
    w_from = int(datetime(first_day.year, first_day.month, first_day.day, tzinfo=timezone.utc).timestamp() * 1000)
    w_to = w_from + ((last_day - first_day).days + 1) * DAY_MS
    out: dict[str, list[dict[str, Any]]] = {}
    for seg in wanted:
        counts: dict[tuple[int, int, str], int] = {}
        for customer, events in customers.items():
            if seg and not any(s.name == seg and segment_matches(s, facts[customer]) for s in segments):
                continue
            for t in build_journey(events, compiled)["transitions"]:
                if w_from <= _ms(t["time"]) < w_to:
                    key = (-1 if t["from"] is None else compiled.index[t["from"]], compiled.index[t["to"]], t["kind"])
                    counts[key] = counts.get(key, 0) + 1
        out[seg] = [
            {"from": None if f < 0 else compiled.order[f], "to": compiled.order[t], "kind": kind, "count": n}
            for (f, t, kind), n in sorted(counts.items())
        ]
    return out
