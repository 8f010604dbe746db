"""Per-customer journey state for stage KPIs: computed from a customer's events, one row per map version.

A KPI call must not rescan every event (docs/kpis.md), so each stitched customer's journey through each
of the project's maps is condensed into one ``stage_state`` row — first entry into every stage, when they
moved on, every transition, sentiment-bearing touchpoints, segment membership — and KPIs aggregate those
rows. :class:`StateWriter` recomputes the rows of the customers whose events or ids changed; the query
service's :class:`~query.state_updater.StageStateUpdater` decides which those are.

The rows are computed from the same definitions as the journey endpoint: the rule index of each event comes
from :func:`query.stage_sql.rule_index_sql` (proven equal to ``CompiledMap.assign`` by tests), transitions
from :func:`query.journey.transitions_of`, sentiment from the rule, segments from
:func:`journeys.maps.segment_matches` over :func:`query.reads.facts_of`. Tests compare the KPIs computed
from these rows with a brute-force computation over the raw events.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson

from journeys import identities
from journeys.clickhouse import ClickHouse
from journeys.maps import SENTIMENTS, JourneyMap, Segment, SentimentFromProperty, segment_matches
from query.journey import CompiledMap, transitions_of
from query.reads import ID_CHUNK, facts_of
from query.stage_sql import rule_index_sql

STATE_COLUMNS = (
    "project_id",
    "map_name",
    "map_version",
    "customer_id",
    "version",
    "is_deleted",
    "ids",
    "segments",
    "entered",
    "next_at",
    "entry_touchpoint",
    "entry_channel",
    "t_time",
    "t_from",
    "t_to",
    "t_kind",
    "t_repeat",
    "s_time",
    "s_stage",
    "s_sentiment",
)

EXISTING_SQL = """
SELECT DISTINCT customer_id FROM stage_state
WHERE project_id = {project_id:String} AND customer_id IN {customers:Array(String)}
"""


@dataclass(frozen=True)
class MapVersion:
    """The latest version of one map, compiled for both paths (Python rules and the SQL rule index)."""

    compiled: CompiledMap

    @property
    def name(self) -> str:
        return self.compiled.map.name

    @property
    def version(self) -> int:
        return self.compiled.version


@dataclass(frozen=True)
class Definitions:
    """What a project's state rows are computed against: its maps' and segments' latest versions."""

    maps: tuple[MapVersion, ...]
    segments: tuple[Segment, ...]
    fingerprint: str

    @staticmethod
    def of(maps: list[tuple[JourneyMap, int]], segments: list[tuple[Segment, int]]) -> "Definitions":
        maps = sorted(maps, key=lambda mv: mv[0].name)
        segments = sorted(segments, key=lambda sv: sv[0].name)
        fingerprint = ";".join([f"map:{m.name}:{v}" for m, v in maps] + [f"segment:{s.name}:{v}" for s, v in segments])
        return Definitions(
            tuple(MapVersion(CompiledMap(m, v)) for m, v in maps), tuple(s for s, _ in segments), fingerprint
        )


class _Version:
    """Row versions for ReplacingMergeTree: microseconds, strictly increasing within this process."""

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last = max(time.time_ns() // 1000, self.last + 1)
        return self.last


def state_of(
    mv: MapVersion, staged: list[tuple[int, int, str, str, dict[str, Any] | None, str]]
) -> dict[str, list[Any]] | None:
    """The state arrays of one customer and map from its staged events, in journey order:
    ``(time_ms, rule index, channel, sentiment sent, properties or None, message id)``. ``None`` when no
    event of the customer is a touchpoint of this map."""
    compiled = mv.compiled
    rules = compiled.rules
    touches = []
    s_time, s_stage, s_sentiment = [], [], []
    for time_ms, rule_index, channel, sent, properties, _ in staged:
        rule = rules[rule_index - 1]
        stage = rule.touchpoint.stage
        touches.append((time_ms, stage, rule.touchpoint.id, channel))
        sentiment = rule.sentiment({"properties": properties or {}, "sentiment": sent})
        if sentiment in SENTIMENTS:
            s_time.append(time_ms)
            s_stage.append(compiled.index[stage])
            s_sentiment.append(sentiment)
    if not touches:
        return None
    transitions = transitions_of(compiled, touches)
    stages = len(compiled.order)
    entered, next_at = [0] * stages, [0] * stages
    entry_touchpoint, entry_channel = [""] * stages, [""] * stages
    first_at: dict[int, int] = {}  # stage index → position of its first transition
    for position, t in enumerate(transitions):
        to = compiled.index[t["to"]]
        if to not in first_at:
            first_at[to] = position
            entered[to] = t["time"]
            entry_touchpoint[to], entry_channel[to] = t["touchpoint"] or "", t["channel"]
        for stage, first in first_at.items():
            if stage < to and next_at[stage] == 0 and position > first:
                next_at[stage] = t["time"]
    return {
        "entered": entered,
        "next_at": next_at,
        "entry_touchpoint": entry_touchpoint,
        "entry_channel": entry_channel,
        "t_time": [t["time"] for t in transitions],
        "t_from": [-1 if t["from"] is None else compiled.index[t["from"]] for t in transitions],
        "t_to": [compiled.index[t["to"]] for t in transitions],
        "t_kind": [t["kind"] for t in transitions],
        "t_repeat": [int(t["repeat"]) for t in transitions],
        "s_time": s_time,
        "s_stage": s_stage,
        "s_sentiment": s_sentiment,
    }


_TIME_FIELDS = ("entered", "next_at", "t_time", "s_time")


def _seconds(ms: int) -> float:
    return ms / 1000


class StateWriter:
    """Recomputes and writes the state rows of customers whose events or ids changed."""

    def __init__(self, ch: ClickHouse):
        self.ch = ch
        self._version = _Version()
        self._sql: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}  # (project, fingerprint) → read

    def _staged_sql(self, project_id: str, definitions: Definitions) -> tuple[str, dict[str, Any]]:
        """One read for all maps: each event's rule index per map, only events some map stages."""
        key = (project_id, definitions.fingerprint)  # two projects may have same-named maps with other rules
        cached = self._sql.get(key)
        if cached is not None:
            return cached
        params: dict[str, Any] = {}
        rule_columns, property_rules = [], []
        for n, mv in enumerate(definitions.maps):
            expression, values = rule_index_sql(mv.compiled.map, prefix=f"m{n}_")
            params.update(values)
            rule_columns.append(f"{expression} AS rule_{n}")
            property_rules += [
                f"rule_{n} = {i}"
                for i, rule in enumerate(mv.compiled.rules, start=1)
                if isinstance(rule.touchpoint.sentiment, SentimentFromProperty)
            ]
        rules = ", ".join(f"rule_{n}" for n in range(len(definitions.maps)))
        any_rule = " OR ".join(f"rule_{n} > 0" for n in range(len(definitions.maps))) or "0"
        needs_properties = " OR ".join(property_rules) or "0"
        sql = f"""
SELECT distinct_id, toUnixTimestamp64Milli(timestamp) AS t, toUnixTimestamp64Milli(received_at) AS r,
       message_id, toString(channel), toString(sentiment), if({needs_properties}, properties, ''), [{rules}]
FROM (
    SELECT distinct_id, timestamp, received_at, message_id, channel, sentiment, properties, {", ".join(rule_columns)}
    FROM events
    WHERE project_id = {{project_id:String}} AND distinct_id IN {{ids:Array(String)}}
)
WHERE {any_rule}
"""
        self._sql = {key: (sql, params)}  # one project's definitions at a time is the common case
        return sql, params

    async def refresh(self, project_id: str, definitions: Definitions, touched: set[str]) -> int:
        """Rewrite the state rows of every customer that ``touched`` ids belong to, and retire the rows of
        customers that no longer exist (merged into another). Returns the number of rows written."""
        if not definitions.maps or not touched:
            return 0
        written = 0
        touched_list = sorted(touched)
        for start in range(0, len(touched_list), ID_CHUNK):
            written += await self._refresh_chunk(project_id, definitions, touched_list[start : start + ID_CHUNK])
        return written

    async def _refresh_chunk(self, project_id: str, definitions: Definitions, touched: list[str]) -> int:
        current = await identities.current_customers(self.ch, project_id, touched)
        # A merge re-points every member of the old customer, its own id included, so a customer that no
        # longer exists is always among the touched ids: an id whose customer is now someone else.
        retired = sorted({i for i, c in current.items() if c != i})
        customers = sorted(set(current.values()))
        members = await identities.members_of(self.ch, project_id, customers)
        staged = await self._staged(project_id, definitions, members)
        facts = await facts_of(self.ch, project_id, {c: sorted(ids) for c, ids in members.items()})

        def compute() -> list[bytes]:
            out: list[bytes] = []
            for customer in customers:
                segments = [s.name for s in definitions.segments if segment_matches(s, facts[customer])]
                events = staged.get(customer, [])
                for n, mv in enumerate(definitions.maps):
                    mine = [(t, rules[n], ch, s, p, m) for t, rules, ch, s, p, m in events if rules[n] > 0]
                    state = state_of(mv, mine)
                    if state is None:
                        continue  # never touched this map; a row written earlier stays right (events only grow)
                    out.append(self._line(project_id, mv, customer, sorted(members[customer]), segments, state))
            return out

        # Thousands of customers take a few hundred ms of Python: on a thread, the event loop keeps serving
        # requests between GIL switches instead of stalling for the whole chunk.
        lines = await asyncio.to_thread(compute)
        if retired:
            lines += await self._tombstones(project_id, definitions, retired)
        if lines:
            await self.ch.insert_lines("stage_state", STATE_COLUMNS, b"".join(lines))
        return len(lines)

    async def _staged(
        self, project_id: str, definitions: Definitions, members: dict[str, set[str]]
    ) -> dict[str, list[tuple[int, list[int], str, str, dict[str, Any] | None, str]]]:
        """Each customer's staged events in journey order (time, receipt, message id), each message once."""
        sql, params = self._staged_sql(project_id, definitions)
        owner = {i: c for c, ids in members.items() for i in ids}
        ids = sorted(owner)
        rows: list[tuple] = []
        for start in range(0, len(ids), ID_CHUNK):
            _, chunk = await self.ch.query(sql, {**params, "project_id": project_id, "ids": ids[start : start + ID_CHUNK]})
            rows += chunk
        rows.sort(key=lambda r: (r[1], r[2], r[3]))
        out: dict[str, list[tuple[int, list[int], str, str, dict[str, Any] | None, str]]] = {}
        seen: set[tuple[str, str]] = set()
        for distinct_id, t, _, message_id, channel, sentiment, properties, rules in rows:
            customer = owner[distinct_id]
            if (customer, message_id) in seen:
                continue
            seen.add((customer, message_id))
            parsed = orjson.loads(properties) if properties else None
            out.setdefault(customer, []).append((t, list(rules), channel, sentiment, parsed, message_id))
        return out

    async def _tombstones(self, project_id: str, definitions: Definitions, retired: list[str]) -> list[bytes]:
        _, rows = await self.ch.query(EXISTING_SQL, {"project_id": project_id, "customers": retired})
        existing = {r[0] for r in rows}
        empty = {field: [] for field in STATE_COLUMNS[8:]}
        return [
            self._line(project_id, mv, customer, [], [], empty, deleted=True)
            for customer in sorted(existing)
            for mv in definitions.maps
        ]

    def _line(
        self,
        project_id: str,
        mv: MapVersion,
        customer: str,
        ids: list[str],
        segments: list[str],
        state: dict[str, list[Any]],
        deleted: bool = False,
    ) -> bytes:
        values = [project_id, mv.name, mv.version, customer, self._version.next(), int(deleted), ids, segments]
        for field in STATE_COLUMNS[8:]:
            column = state[field]
            values.append([_seconds(v) for v in column] if field in _TIME_FIELDS else column)
        return orjson.dumps(values) + b"\n"
