"""Per-customer journey state for stage KPIs, kept as signed facts in ``stage_facts``.

A KPI call must not rescan every event, nor fold every customer (docs/kpis.md): each stitched customer's
journey through each of the project's maps is condensed (:func:`state_of`: first entry into every stage,
when they moved on, every transition, sentiment-bearing touchpoints) into facts (:func:`facts_of`), once per
segment key the customer counts under, and KPIs sum the facts' pre-aggregated projections.
:class:`StateWriter` recomputes the facts of the customers whose events or ids changed and writes only
the difference from what the table holds for them; the query service's
:class:`~query.state_updater.StageStateUpdater` decides which customers those are.

The state is computed from the same definitions as the journey endpoint: the rule index of each event comes
from :func:`query.stage_sql.rule_index_sql` (proven equal to ``CompiledMap.assign`` by tests), transitions
from :func:`query.journey.transitions_of`, sentiment from the rule, segments from
:func:`journeys.maps.segment_matches` over :func:`query.segment_facts.segment_facts` (the
rules of :func:`query.reads.facts_of`, read off ``events``). Tests compare the KPIs computed
from these facts with a brute-force computation over the raw events.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson

from journeys import identities
from journeys.clickhouse import ClickHouse
from journeys.maps import SENTIMENTS, JourneyMap, Segment, SentimentFromProperty, Stage, segment_matches
from query.journey import CompiledMap, transitions_of
from query.reads import ID_CHUNK, one_copy_each
from query.segment_facts import segment_facts
from query.stage_sql import rule_index_sql

DAY_MS = 86_400_000
# Part of every build fingerprint: a store written in another format (0005's stage_state rows) is rebuilt.
FACTS_FORMAT = "facts:2"

FACT_COLUMNS = (
    "project_id",
    "map_name",
    "build",
    "customer_id",
    "segment",
    "fact",
    "stage",
    "at",
    "converted",
    "wait_ms",
    "touchpoint",
    "channel",
    "from_stage",
    "move_kind",
    "repeat",
    "sentiment",
    "n",
)

# A fact's identity: everything but the project (a read is per project) and n. Net count = sum(n).
CURRENT_FACTS_SQL = """
SELECT map_name, build, customer_id, segment, toString(fact), stage, toUnixTimestamp64Milli(at), converted,
       wait_ms, touchpoint, channel, from_stage, toString(move_kind), repeat, toString(sentiment), sum(n) AS net
FROM stage_facts
WHERE project_id = {project_id:String} AND customer_id IN {customers:Array(String)} {in_build}
GROUP BY ALL
HAVING net != 0
"""

# Writers of stage_facts read a customer's net facts and write the difference; two writers doing that for
# one customer at once would both subtract the same facts. The updater and a forget take this lock (per
# transaction, so a crashed writer never holds it).
_FACTS_LOCK = 0x6A6F75726E66  # "journf"

Fact = tuple  # (map_name, build, customer_id, segment, fact, stage, at_ms, converted, wait_ms,
#               touchpoint, channel, from_stage, move_kind, repeat, sentiment)


def conversion_window_ms(stage: Stage) -> int:
    """A stage's conversion window in ms: what "converted" means in the facts and in the KPIs."""
    return int(round(stage.conversion_window_days * DAY_MS))


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

    @cached_property
    def windows_ms(self) -> list[int]:
        """Each stage's conversion window, in stage order."""
        by_id = {s.id: s for s in self.compiled.map.stages}
        return [conversion_window_ms(by_id[s]) for s in self.compiled.order]


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
        fingerprint = ";".join(
            [FACTS_FORMAT] + [f"map:{m.name}:{v}" for m, v in maps] + [f"segment:{s.name}:{v}" for s, v in segments]
        )
        return Definitions(
            tuple(MapVersion(CompiledMap(m, v)) for m, v in maps), tuple(s for s, _ in segments), fingerprint
        )


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


def facts_of(
    mv: MapVersion, build: int, customer: str, segments: list[str], state: dict[str, list[Any]]
) -> Counter[Fact]:
    """The facts of one customer's state (:func:`state_of`) in ``build``, once per segment key ('' = all
    customers)."""
    windows = mv.windows_ms
    keys = ["", *segments]
    out: Counter[Fact] = Counter()
    head = (mv.name, build, customer)
    for stage, entered in enumerate(state["entered"]):
        if not entered:
            continue
        next_at = state["next_at"][stage]
        wait = next_at - entered
        converted = next_at > 0 and wait <= windows[stage]
        tail = (
            "entry", stage, entered, int(converted), wait if converted else 0,
            state["entry_touchpoint"][stage], state["entry_channel"][stage], -1, "none", 0, "none",
        )
        for key in keys:
            out[(*head, key, *tail)] += 1
    for at, from_stage, to, kind, repeat in zip(
        state["t_time"], state["t_from"], state["t_to"], state["t_kind"], state["t_repeat"]
    ):
        for key in keys:
            out[(*head, key, "move", to, at, 0, 0, "", "", from_stage, kind, repeat, "none")] += 1
    for at, stage, sentiment in zip(state["s_time"], state["s_stage"], state["s_sentiment"]):
        for key in keys:
            out[(*head, key, "feeling", stage, at, 0, 0, "", "", -1, "none", 0, sentiment)] += 1
    return out


@asynccontextmanager
async def facts_lock(pg: Any) -> AsyncIterator[None]:
    """Hold the stage-facts writers' lock (``pg``: an asyncpg pool or connection; ``None``: no lock, for a
    writer that knows it is alone)."""
    if pg is None:
        yield
        return
    async with (pg.acquire() if hasattr(pg, "acquire") else nullcontext(pg)) as conn:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _FACTS_LOCK)
            yield


async def current_facts(
    ch: ClickHouse, project_id: str, customers: list[str], build: int | None = None
) -> dict[Fact, int]:
    """The net facts of ``customers`` (in ``build``, or in every build)."""
    out: dict[Fact, int] = {}
    params: dict[str, Any] = {"project_id": project_id}
    where = ""
    if build is not None:
        where = "AND build = {build:UInt64}"
        params["build"] = build
    for start in range(0, len(customers), ID_CHUNK):
        params["customers"] = customers[start : start + ID_CHUNK]
        _, rows = await ch.query(CURRENT_FACTS_SQL.replace("{in_build}", where), params)
        for *fact, net in rows:
            out[tuple(fact)] = net
    return out


# A KPI answer is several reads of stage_facts; a write landing between two of them would mix two states
# (a quantile's bin picked from one, its waits read from the other: a KeyError; entered != converted +
# dropped + in progress). So readers of one project's facts share this lock for the length of an answer, and
# a write takes it exclusively for the length of its insert only (computing the difference happens before):
# a write waits for the answers being computed (~0.1 s), an answer for one insert. Per project (the second
# key is the project's hash), so one project's writes never hold up another's answers. PostgreSQL queues
# lock requests in order, so a steady stream of answers cannot starve the writer.
_FACTS_VIEW_LOCK = 0x6A6F7572  # "jour": the advisory lock class; hashtext(project_id) is the object
LOCK_WAIT_S = 30.0


def lock_pool(stores: Any) -> Any:
    """The connections to hold the facts view lock with (Stores.pg_locks; the main pool where there is none)."""
    return getattr(stores, "pg_locks", None) or stores.pg


@asynccontextmanager
async def _facts_view(pg: Any, project_id: str, mode: str) -> AsyncIterator[None]:
    if pg is None:
        yield
        return
    function = "pg_advisory_xact_lock_shared" if mode == "read" else "pg_advisory_xact_lock"
    # A pool here is Stores.pg_locks: its connections hold this lock and nothing else, so whoever holds one can
    # still take other connections for its reads (a pool shared with those reads ran dry under 9 concurrent
    # answers and hung the service for good). The timeout turns a stall into an error instead of a hang.
    async with (pg.acquire(timeout=LOCK_WAIT_S) if hasattr(pg, "acquire") else nullcontext(pg)) as conn:
        async with conn.transaction():  # on a caller's connection, a savepoint: held to its transaction's end
            await conn.execute(f"SELECT {function}($1, hashtext($2))", _FACTS_VIEW_LOCK, project_id)
            yield


def facts_change(pg: Any, project_id: str) -> Any:
    """Hold while making a change to ``project_id``'s facts visible (an insert, a build's deletion): it waits
    for the answers being read, and answers wait for it."""
    return _facts_view(pg, project_id, "write")


def consistent_facts(pg: Any, project_id: str) -> Any:
    """Hold while reading one answer's worth of ``project_id``'s facts: no write becomes visible meanwhile
    (``pg``: an asyncpg pool or connection)."""
    return _facts_view(pg, project_id, "read")


async def write_differences(
    ch: ClickHouse, project_id: str, desired: Counter[Fact], current: dict[Fact, int], pg: Any = None
) -> int:
    """Insert ``desired - current`` as signed rows, in one insert, while no KPI answer of the project is being
    read (``pg``: the pool; ``None`` only for a writer that knows nobody reads); returns the number of rows."""
    lines = []
    for fact in desired.keys() | current.keys():
        n = desired.get(fact, 0) - current.get(fact, 0)
        if n:
            lines.append(_line(project_id, fact, n))
    if lines:
        async with facts_change(pg, project_id):
            await ch.insert_lines("stage_facts", FACT_COLUMNS, b"".join(lines))
    return len(lines)


def _line(project_id: str, fact: Fact, n: int) -> bytes:
    map_name, build, customer, segment, kind, stage, at_ms, *rest = fact
    return orjson.dumps([project_id, map_name, build, customer, segment, kind, stage, at_ms / 1000, *rest, n]) + b"\n"


async def forget_facts(ch: ClickHouse, pg: Any, project_id: str, customers: list[str]) -> int:
    """Withdraw every fact of ``customers`` (all maps and builds): their KPI contributions go at once, and
    their rows go with the next merge (the pairs sum to zero)."""
    async with facts_lock(pg):
        return await write_differences(ch, project_id, Counter(), await current_facts(ch, project_id, customers), pg)


class StateWriter:
    """Recomputes the facts of customers whose events or ids changed and writes the differences."""

    def __init__(self, ch: ClickHouse, pg: Any = None, locks: Any = None):
        self.ch = ch
        self.pg = pg
        self.locks = locks or pg  # where the facts view lock is taken (Stores.pg_locks)
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

    async def refresh(
        self, project_id: str, definitions: Definitions, build: int, touched: set[str], *, serving: bool = True
    ) -> int:
        """Rewrite the facts in ``build`` of every customer that ``touched`` ids belong to, and withdraw those
        of customers that no longer exist (merged into another). Returns the number of rows written."""
        if not definitions.maps or not touched:
            return 0
        written = 0
        touched_list = sorted(touched)
        for start in range(0, len(touched_list), ID_CHUNK):
            written += await self._refresh_chunk(
                project_id, definitions, build, touched_list[start : start + ID_CHUNK], serving
            )
        return written

    async def _refresh_chunk(
        self, project_id: str, definitions: Definitions, build: int, touched: list[str], serving: bool = True
    ) -> int:
        async with facts_lock(self.pg):
            return await self._refresh_locked(project_id, definitions, build, touched, serving)

    async def _refresh_locked(
        self, project_id: str, definitions: Definitions, build: int, touched: list[str], serving: bool = True
    ) -> int:
        current = await identities.current_customers(self.ch, project_id, touched)
        # A merge re-points every member of the old customer, its own id included, so a customer that no
        # longer exists is always among the touched ids: an id whose customer is now someone else. Its facts
        # are not desired any more, so the difference withdraws them.
        retired = sorted({i for i, c in current.items() if c != i})
        customers = sorted(set(current.values()))
        members = await identities.members_of(self.ch, project_id, customers)
        # Independent reads, side by side: this is the updater's latency from an event to the KPIs.
        staged, facts, existing = await asyncio.gather(
            self._staged(project_id, definitions, members),
            # Off `events`, not the views' tables: their parts commit after the events part (query/segment_facts.py).
            segment_facts(self.ch, project_id, {c: sorted(ids) for c, ids in members.items()}, definitions.segments),
            current_facts(self.ch, project_id, sorted(set(customers) | set(retired)), build),
        )

        def compute() -> Counter[Fact]:
            out: Counter[Fact] = Counter()
            for customer in customers:
                segments = [s.name for s in definitions.segments if segment_matches(s, facts[customer])]
                events = staged.get(customer, [])
                for n, mv in enumerate(definitions.maps):
                    mine = [(t, rules[n], ch, s, p, m) for t, rules, ch, s, p, m in events if rules[n] > 0]
                    state = state_of(mv, mine)
                    if state is not None:
                        out.update(facts_of(mv, build, customer, segments, state))
            return out

        # Thousands of customers take a few hundred ms of Python: on a thread, the event loop keeps serving
        # requests between GIL switches instead of stalling for the whole chunk.
        desired = await asyncio.to_thread(compute)
        # A build that does not serve yet is read by no answer: its inserts need not wait for them.
        return await write_differences(self.ch, project_id, desired, existing, self.locks if serving else None)

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
        out: dict[str, list[tuple[int, list[int], str, str, dict[str, Any] | None, str]]] = {}
        for distinct_id, t, _, message_id, channel, sentiment, properties, rules in one_copy_each(
            rows, lambda row: (owner[row[0]], row[3]), at=1, received=2, message_id=3
        ):
            customer = owner[distinct_id]
            parsed = orjson.loads(properties) if properties else None
            out.setdefault(customer, []).append((t, list(rules), channel, sentiment, parsed, message_id))
        return out
