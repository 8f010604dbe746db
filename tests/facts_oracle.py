"""The stage facts of customers computed in plain Python, event by event: the oracle of query/facts/compute.py.

This is the computation the StageStateUpdater ran before the facts moved into ClickHouse (issue 17), kept
as the definitions written out in Python: each customer's staged events in journey order, each message
once (:func:`query.reads.one_copy_each`), the rule's stage, transitions from
:func:`query.journey.transitions_of` (the journey endpoint's own), entries and moves as docs/kpis.md defines
them, sentiments from the rule (``_Rule.sentiment``), segments from ``segment_matches`` over the traits and
first touch read off ``events`` (tests/segment_facts.py, proven equal to the profiles by
test_no_change_missed.py).

Also the tests' own way to read a customer's net facts and to write facts by hand (:func:`current_facts`,
:func:`write_differences`): the service reads and writes them in SQL only.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson

from journeys import identities
from journeys.clickhouse import ClickHouse
from query.maps import SENTIMENTS, segment_matches
from query.journey import transitions_of
from query.reads import ID_CHUNK, one_copy_each
from query.facts.locks import facts_change
from query.facts.model import FACT_COLUMNS, KEY_SEPARATOR, Definitions, MapVersion
from query.facts.rule_index import rule_index_sql
from segment_facts import segment_facts


# A fact's identity: everything but the project (a read is per project) and n. Net count = sum(n).
CURRENT_FACTS_SQL = """
SELECT map_name, build, customer_id, segments, toString(fact), stage, toUnixTimestamp64Milli(at), converted,
       wait_ms, touchpoint, channel, from_stage, toString(move_kind), repeat, toString(sentiment), sum(n) AS net
FROM stage_facts
WHERE project_id = {project_id:String} AND customer_id IN {customers:Array(String)} {in_build}
GROUP BY ALL
HAVING net != 0
"""


Fact = tuple  # (map_name, build, customer_id, segments (a tuple), fact, stage, at_ms, converted, wait_ms,
#               touchpoint, channel, from_stage, move_kind, repeat, sentiment)


def keys_of(segments: str) -> tuple[str, ...]:
    """A fact row's segment keys, from the text ``stage_facts.segments`` holds (joined by ',', migration 0012)."""
    return tuple(segments.split(KEY_SEPARATOR))


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
        for map_name, b, customer, segments, *fact, net in rows:
            out[(map_name, b, customer, keys_of(segments), *fact)] = net
    return out


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
    map_name, build, customer, segments, kind, stage, at_ms, *rest = fact
    return (
        orjson.dumps(
            [project_id, map_name, build, customer, KEY_SEPARATOR.join(segments), kind, stage, at_ms / 1000, *rest, n]
        )
        + b"\n"
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
        for earlier, first in first_at.items():
            if earlier < to and next_at[earlier] == 0 and position > first:
                next_at[earlier] = t["time"]
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
    """The facts of one customer's state (:func:`state_of`) in ``build``, each with the customer's segment keys
    ('' = all customers, then ``segments`` in the definitions' order)."""
    windows = mv.windows_ms
    out: Counter[Fact] = Counter()
    head = (mv.name, build, customer, ("", *segments))
    for stage, entered in enumerate(state["entered"]):
        if not entered:
            continue
        next_at = state["next_at"][stage]
        wait = next_at - entered
        converted = next_at > 0 and wait <= windows[stage]
        tail = (
            "entry",
            stage,
            entered,
            int(converted),
            wait if converted else 0,
            state["entry_touchpoint"][stage],
            state["entry_channel"][stage],
            -1,
            "none",
            0,
            "none",
        )
        out[(*head, *tail)] += 1
    for at, from_stage, to, kind, repeat in zip(
        state["t_time"], state["t_from"], state["t_to"], state["t_kind"], state["t_repeat"]
    ):
        out[(*head, "move", to, at, 0, 0, "", "", from_stage, kind, repeat, "none")] += 1
    for at, stage, sentiment in zip(state["s_time"], state["s_stage"], state["s_sentiment"]):
        out[(*head, "feeling", stage, at, 0, 0, "", "", -1, "none", 0, sentiment)] += 1
    return out


def _staged_sql(definitions: Definitions) -> tuple[str, dict[str, Any]]:
    """One read for all maps: each event's rule index per map, only events some map stages."""
    params: dict[str, Any] = {}
    rule_columns = []
    for n, mv in enumerate(definitions.maps):
        expression, values = rule_index_sql(mv.compiled.map, prefix=f"m{n}_")
        params.update(values)
        rule_columns.append(f"{expression} AS rule_{n}")
    rules = ", ".join(f"rule_{n}" for n in range(len(definitions.maps)))
    any_rule = " OR ".join(f"rule_{n} > 0" for n in range(len(definitions.maps))) or "0"
    sql = f"""
SELECT distinct_id, toUnixTimestamp64Milli(timestamp) AS t, toUnixTimestamp64Milli(received_at) AS r,
       message_id, toString(channel), toString(sentiment), properties, [{rules}]
FROM (
    SELECT distinct_id, timestamp, received_at, message_id, channel, sentiment, properties, {", ".join(rule_columns)}
    FROM events
    WHERE project_id = {{project_id:String}} AND distinct_id IN {{ids:Array(String)}}
)
WHERE {any_rule}
"""
    return sql, params


async def staged_events(
    ch: ClickHouse, project_id: str, definitions: Definitions, members: dict[str, set[str]]
) -> dict[str, list[tuple[int, list[int], str, str, dict[str, Any] | None, str]]]:
    """Each customer's staged events in journey order (time, receipt, message id), each message once."""
    sql, params = _staged_sql(definitions)
    owner = {i: c for c, ids in members.items() for i in ids}
    _, rows = await ch.query(sql, {**params, "project_id": project_id, "ids": sorted(owner)})
    out: dict[str, list[tuple[int, list[int], str, str, dict[str, Any] | None, str]]] = {}
    columns = ("distinct_id", "at_ms", "received_ms", "message_id", "channel", "sentiment", "properties", "rules")
    for distinct_id, t, _, message_id, channel, sentiment, properties, rules in one_copy_each(
        rows, lambda row: (owner[row[0]], row[3]), columns
    ):
        parsed = orjson.loads(properties) if properties else None
        out.setdefault(owner[distinct_id], []).append((t, list(rules), channel, sentiment, parsed, message_id))
    return out


async def python_facts(
    ch: ClickHouse, project_id: str, definitions: Definitions, build: int, ids: list[str]
) -> Counter[Fact]:
    """The facts of the customers ``ids`` belong to, computed in Python."""
    current = await identities.current_customers(ch, project_id, ids)
    customers = sorted(set(current.values()))
    members = await identities.members_of(ch, project_id, customers)
    staged = await staged_events(ch, project_id, definitions, members)
    facts = await segment_facts(ch, project_id, {c: sorted(i) for c, i in members.items()}, definitions.segments)
    out: Counter[Fact] = Counter()
    for customer in customers:
        segments = [s.name for s in definitions.segments if segment_matches(s, facts[customer])]
        events = staged.get(customer, [])
        for n, mv in enumerate(definitions.maps):
            mine = [(t, rules[n], c, s, p, m) for t, rules, c, s, p, m in events if rules[n] > 0]
            state = state_of(mv, mine)
            if state is not None:
                out.update(facts_of(mv, build, customer, segments, state))
    return out
