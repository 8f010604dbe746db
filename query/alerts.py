"""Alerts: every rule judged as the stage facts change, each transition recorded with its notifications.

**What a rule judges** (docs/alerts.md). A rule watches one stage's metric, per segment, over the outcomes
**decided** in its last ``window_days`` UTC days (today included): the customers who moved on from the stage
in that time (converted: entered + wait), and those whose conversion window closed in it without moving on
(dropped: entered + W). Customers still inside their conversion window are never counted as either, so a
rule fires on nothing they could still change. (A window of *entries* would not do: with the default 30-day
conversion window nobody who entered in the last 7 days can have dropped yet, and a rule on them could never
fire.) It fires when the metric misses the threshold with at least ``min_decided`` customers decided, and it
resolves only once the metric meets ``recover_at`` (5 % of the way from the threshold towards the ideal unless
the rule says): a stage on the edge does not flap.

**When it is judged.** The stage-state updater (query/facts/updater.py) says which projects' serving facts
changed; their rules are judged right after (at most once a second per project), and every project's rules
every ``every_s`` as well, because time alone decides customers (an entry whose conversion window closes
becomes a drop). The evaluator works where the updater leads (one across replicas).

**Nothing is lost, nothing is sent twice for one transition.** A transition updates the rule's state, records
the event and queues one notification per webhook in the outbox, in one PostgreSQL transaction, under the
project's alert lock: a crash leaves all of it or none, two evaluators cannot both fire, and a judgement older
than the one stored is dropped. query/alert_delivery.py delivers the outbox.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from typing import Any, Protocol

import orjson

from query import definitions
from query.alert_rules import HIGHER_IS_BETTER, AlertRule, thresholds, validate_alert_rule
from journeys.metrics import Metrics
from journeys.stores import Stores
from query.kpis import ALL, outcome
from query.reads import iso
from query.sql import fill
from query.background import Background
from query.facts.builds import built_for, current_definitions, serving_build
from query.facts.locks import consistent_facts, lock_pool
from query.facts.model import DAY_MS, Definitions, MapVersion, split_keys

log = logging.getLogger(__name__)

PROJECTS_SQL = "SELECT DISTINCT project_id FROM definitions WHERE kind = 'alert'"

# One stage's entries that can have been decided since `since_ms` (entered at or after since - W), per segment:
# converted ones decided then (at + wait), dropped ones (conversion window closed by now: at <= now - W, so closed
# at or after since), and those still in progress now. An open entry's wait_ms is 0 (migration 0006). Signed facts:
# sum(n), per key of each row's `segments` (joined by ',', migration 0012). apply_mutations_on_fly = 0 as for
# every KPI read (query/kpis.py). string.Template texts (query.sql.fill): `$where` is this SQL, `{name:Type}` a
# value clickhouse-connect binds.
_WHERE = (
    "project_id = {project_id:String} AND build = {build:UInt64} AND map_name = {map_name:String} "
    "AND fact = 'entry' AND segment IN {segments:Array(String)} AND stage = {stage:UInt16} "
    "AND at >= fromUnixTimestamp64Milli({opened_ms:Int64}, 'UTC')"
)
DECIDED_SQL = fill(
    """
SELECT segment,
       sumIf(n, converted = 1 AND toUnixTimestamp64Milli(at) + wait_ms >= {since_ms:Int64}) AS converted_n,
       sumIf(n, converted = 0 AND at <= fromUnixTimestamp64Milli({closed_ms:Int64}, 'UTC')) AS dropped_n,
       sumIf(n, converted = 0 AND at > fromUnixTimestamp64Milli({closed_ms:Int64}, 'UTC')) AS in_progress_n
FROM stage_facts ARRAY JOIN $keys AS segment
WHERE $where
GROUP BY segment
SETTINGS apply_mutations_on_fly = 0
""",
    where=_WHERE,
    keys=split_keys("segments"),
)
# The nearest-rank median (rank ceil(n/2)) of the waits of the customers converted since `since_ms`.
MEDIAN_SQL = fill(
    """
SELECT segment, waits[arrayFirstIndex(c -> c >= intDiv(total + 1, 2), arrayCumSum(counts))] AS median_ms
FROM (
    SELECT segment, arrayMap(x -> x.1, arraySort(groupArray((w, c)))) AS waits,
           arrayMap(x -> x.2, arraySort(groupArray((w, c)))) AS counts, sum(c) AS total
    FROM (
        SELECT segment, wait_ms AS w, sum(n) AS c FROM stage_facts ARRAY JOIN $keys AS segment
        WHERE $where AND converted = 1 AND toUnixTimestamp64Milli(at) + wait_ms >= {since_ms:Int64}
        GROUP BY segment, w
        HAVING c > 0
    )
    GROUP BY segment
)
SETTINGS apply_mutations_on_fly = 0
""",
    where=_WHERE,
    keys=split_keys("segments"),
)


@dataclass(frozen=True)
class Verdict:
    """A rule's metric for one segment, judged: ``status`` is ``below_target`` or ``met`` at the threshold, or
    why there is no judgement (``no_data``, ``too_few_decided``, ``no_threshold``, ``not_computed``); ``fire``
    and ``recover`` say what a rule in each state should do."""

    status: str
    fire: bool = False
    recover: bool = False
    numbers: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, **self.numbers}


def judge(rule: AlertRule, counts: dict[str, Any], limits: tuple[Fraction, Fraction] | None) -> Verdict:
    """Judge one segment's decided outcomes (``converted``, ``dropped``, ``in_progress``, ``median_ms``)."""
    converted, dropped, in_progress = counts["converted"], counts["dropped"], counts["in_progress"]
    decided = converted + dropped
    numbers: dict[str, Any] = {"converted": converted, "dropped": dropped, "in_progress": in_progress}
    if "window" in counts:
        numbers["window"] = counts["window"]
    if limits is None:
        return Verdict("no_threshold", numbers=numbers)
    goal, recover_at = limits
    numbers.update(threshold=float(goal), recover_at=float(recover_at))
    value: Fraction | None = None
    enough = decided >= rule.min_decided
    if rule.metric == "conversion_rate" and decided:
        value = Fraction(converted, decided)
    elif rule.metric == "drop_off_rate" and decided:
        value = Fraction(dropped, decided)
    elif rule.metric == "median_days_to_convert" and counts.get("median_ms") is not None:
        value = Fraction(counts["median_ms"], DAY_MS)
        enough = converted >= rule.min_decided  # a median of the waits: only converted customers have one
    elif rule.metric == "in_progress":
        value, enough = Fraction(in_progress), True  # a count of now: nothing to wait for
    if value is None:
        return Verdict("no_data", numbers=numbers)
    numbers["actual"] = float(value)
    if not enough:  # a quiet hour (two drops out of two) pages nobody
        return Verdict("too_few_decided", numbers=numbers)
    higher = rule.metric in HIGHER_IS_BETTER
    status, _ = outcome(goal, value, value, higher_is_better=higher)
    recovered, _ = outcome(recover_at, value, value, higher_is_better=higher)
    return Verdict(status, fire=status == "below_target", recover=recovered == "met", numbers=numbers)


@dataclass(frozen=True)
class Judged:
    rule: AlertRule
    version: int
    segment: str  # ALL ("") for all customers
    verdict: Verdict


def watching(rule: AlertRule) -> dict[str, Any]:
    """What a rule's state is about: a new version changing it starts the state afresh (a firing alert of the
    old one resolves, "rule changed"); a new threshold or webhook does not."""
    return {"map": rule.map, "stage": rule.stage, "metric": rule.metric, "window_days": rule.window_days}


async def judge_project(
    stores: Stores, project_id: str, now: datetime
) -> tuple[list[tuple[AlertRule, int]], list[Judged] | None]:
    """Every enabled rule of the project judged on the serving build of its facts (what ``/v1/kpis`` reads).
    Also returns every rule with its version. ``None`` instead of the judgements: the facts that serve cannot be
    judged now (their definitions are gone until a rebuild ends); the stored states stay as they are."""
    rules = [
        (validate_alert_rule(v.body), v.version)
        for v in await definitions.latest_of_each(stores.pg, project_id, "alert")
    ]
    enabled = [(rule, version) for rule, version in rules if rule.enabled]
    if not enabled:
        return rules, []
    # The serving build is read, and every rule's counts, while no facts write (nor a switch to a new build and
    # the old one's deletion) can become visible: as for a KPI answer (query/kpis_api.py).
    async with consistent_facts(lock_pool(stores), project_id):
        return rules, await _judge_rules(stores, project_id, enabled, now)


async def _judge_rules(
    stores: Stores, project_id: str, enabled: list[tuple[AlertRule, int]], now: datetime
) -> list[Judged] | None:
    latest, build = await asyncio.gather(
        current_definitions(stores.pg, project_id), serving_build(stores.pg, project_id)
    )
    served: Definitions | None = latest
    if build.fingerprint != latest.fingerprint:
        served = await built_for(stores.pg, project_id, build)
        if served is None and build.number:
            return None
    segment_names = [] if served is None else [s.name for s in served.segments]
    judged: list[Judged] = []
    for rule, version in enabled:
        newest = next((m for m in latest.maps if m.name == rule.map), None)
        if newest is None or rule.stage not in newest.compiled.order[:-1]:
            continue  # the map's latest version has no such stage to convert from: watched no more (resolved)
        watched = (
            [ALL] if rule.segments == [] else [ALL, *segment_names] if rule.segments == "*" else list(rule.segments)
        )
        mv = None if served is None else next((m for m in served.maps if m.name == rule.map), None)
        computed = [s for s in watched if s == ALL or s in segment_names]
        if mv is None or rule.stage not in mv.compiled.order[:-1]:
            computed = []
        for segment in watched:
            if segment not in computed:
                judged.append(Judged(rule, version, segment, Verdict("not_computed")))
        if not computed or mv is None:
            continue
        counts = await decided_outcomes(stores, project_id, build.number, mv, rule, computed, now)
        limits = thresholds(rule, mv.compiled.map)
        for segment in computed:
            judged.append(Judged(rule, version, segment, judge(rule, counts[segment], limits)))
    return judged


async def decided_outcomes(
    stores: Stores, project_id: str, build: int, mv: MapVersion, rule: AlertRule, segments: list[str], now: datetime
) -> dict[str, dict[str, Any]]:
    """Per segment: the stage's outcomes decided since the window began, those in progress now, and (median
    rules) the median wait of the converted."""
    stage = mv.compiled.order.index(rule.stage)
    window_ms = mv.windows_ms[stage]
    since = datetime.combine(now.date() - timedelta(days=rule.window_days - 1), datetime.min.time(), timezone.utc)
    since_ms, now_ms = int(since.timestamp() * 1000), int(now.timestamp() * 1000)
    params = {
        "project_id": project_id,
        "build": build,
        "map_name": rule.map,
        "segments": segments,
        "stage": stage,
        "since_ms": since_ms,
        "opened_ms": since_ms - window_ms,
        "closed_ms": now_ms - window_ms,
    }
    queries = [stores.clickhouse.query(DECIDED_SQL, params)]
    if rule.metric == "median_days_to_convert":
        queries.append(stores.clickhouse.query(MEDIAN_SQL, params))
    results = await asyncio.gather(*queries)
    counts: dict[str, dict[str, Any]] = {
        s: {"converted": 0, "dropped": 0, "in_progress": 0, "median_ms": None} for s in segments
    }
    for segment, converted, dropped, in_progress in results[0][1]:
        counts[segment].update(converted=int(converted), dropped=int(dropped), in_progress=int(in_progress))
    for segment, median_ms in results[1][1] if len(results) > 1 else ():
        counts[segment]["median_ms"] = int(median_ms)
    for found in counts.values():
        found["window"] = {"from": iso(since), "to": iso(now)}
    return counts


def _summary(kind: str, rule: AlertRule, segment: str, numbers: dict[str, Any], reason: str) -> str:
    who = "all customers" if segment == ALL else f"segment {segment}"
    if kind == "resolved" and reason != "recovered":
        return f"Resolved: {rule.name} ({reason}): stage {rule.stage} of map {rule.map}, {who}."
    value = numbers.get("actual")
    shown = "unknown" if value is None else f"{value:.4g}"
    sign = "<" if rule.metric in HIGHER_IS_BETTER else ">"
    if kind == "resolved":
        sign = "≥" if rule.metric in HIGHER_IS_BETTER else "≤"
        limit = numbers.get("recover_at")
    else:
        limit = numbers.get("threshold")
    head = "Firing" if kind == "fired" else "Resolved"
    decided = numbers.get("converted", 0) + numbers.get("dropped", 0)
    return (
        f"{head}: {rule.name}: {rule.metric} of stage {rule.stage} (map {rule.map}, {who}, last {rule.window_days} "
        f"days) is {shown} {sign} {limit:.4g}; {decided} decided, {numbers.get('in_progress', 0)} in progress."
    )


def payloads(
    event_id: int, kind: str, project_id: str, judged: Judged, at: datetime, reason: str
) -> tuple[dict[str, Any], str]:
    """The JSON notification of a transition, and the one line a chat message shows."""
    rule = judged.rule
    body = {
        "type": f"alert.{kind}",
        "sequence": event_id,
        "at": iso(at),
        "project_id": project_id,
        "rule": {
            "name": rule.name,
            "version": judged.version,
            "map": rule.map,
            "stage": rule.stage,
            "metric": rule.metric,
            "window_days": rule.window_days,
            "min_decided": rule.min_decided,
        },
        "segment": judged.segment or None,
        "state": "firing" if kind == "fired" else "ok",
        "reason": reason,
        "evaluation": judged.verdict.as_json(),
    }
    return body, _summary(kind, rule, judged.segment, judged.verdict.numbers, reason)


def _encoded(fmt: str, delivery_id: str, body: dict[str, Any], text: str) -> bytes:
    if fmt == "slack":  # a Slack (or Mattermost, Discord /slack) incoming webhook: text is what it shows
        return orjson.dumps({"text": text})
    return orjson.dumps({"id": delivery_id, **body, "text": text})


async def record(
    pg: Any, project_id: str, rules: list[tuple[AlertRule, int]], judged: list[Judged], now: datetime
) -> int:
    """Store each verdict; for each transition record the event and queue its notifications, atomically.
    Returns the notifications queued."""
    queued = 0
    enabled = {rule.name for rule, _ in rules if rule.enabled}
    async with pg.acquire() as conn:
        async with conn.transaction():
            # One judge of a project's rules at a time: a state's first row has nothing to lock yet.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"alerts/{project_id}")
            rows = await conn.fetch(
                "SELECT rule, segment, state, evaluated_at, watching FROM alert_states WHERE project_id = $1",
                project_id,
            )
            states = {(r["rule"], r["segment"]): r for r in rows}
            for item in judged:
                stored = states.pop((item.rule.name, item.segment), None)
                if stored is not None and stored["evaluated_at"] > now:
                    continue  # judged again since (another evaluator, during a handover): the newer one stands
                was = "ok" if stored is None else stored["state"]
                if was == "firing" and from_jsonb(stored["watching"]) != watching(item.rule):
                    # Said of what fired: the old map, stage, metric and window, not the new ones.
                    old = Judged(
                        item.rule.model_copy(update=from_jsonb(stored["watching"])),
                        item.version,
                        item.segment,
                        item.verdict,
                    )
                    queued += await _transition(conn, project_id, old, "resolved", "rule changed", now)
                    was = "ok"
                now_state, reason = was, ""
                if was == "ok" and item.verdict.fire:
                    now_state, reason = "firing", "below"
                elif was == "firing" and item.verdict.recover:
                    now_state, reason = "ok", "recovered"
                elif was == "firing" and item.verdict.status == "no_threshold":
                    now_state, reason = "ok", "no threshold"  # the map lost the target the rule took
                await conn.execute(
                    "INSERT INTO alert_states "
                    "(project_id, rule, segment, state, since, rule_version, evaluated_at, last, watching) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $5, $7::jsonb, $8::jsonb) "
                    "ON CONFLICT (project_id, rule, segment) DO UPDATE "
                    "SET state = EXCLUDED.state, rule_version = EXCLUDED.rule_version, "
                    "evaluated_at = EXCLUDED.evaluated_at, last = EXCLUDED.last, watching = EXCLUDED.watching, "
                    "since = CASE WHEN alert_states.state = EXCLUDED.state AND $9 THEN alert_states.since "
                    "ELSE EXCLUDED.since END",
                    project_id,
                    item.rule.name,
                    item.segment,
                    now_state,
                    now,
                    item.version,
                    orjson.dumps(item.verdict.as_json()).decode(),
                    orjson.dumps(watching(item.rule)).decode(),
                    now_state == was,
                )
                if now_state != was:
                    kind = "fired" if now_state == "firing" else "resolved"
                    queued += await _transition(conn, project_id, item, kind, reason, now)
            # What is no longer watched (a rule disabled, a stage gone from its map): resolved if it was firing.
            by_name = {rule.name: (rule, version) for rule, version in rules}
            for (name, segment), stored in states.items():
                if stored["evaluated_at"] > now:
                    continue
                if stored["state"] == "firing" and name in by_name:
                    rule, version = by_name[name]
                    reason = "rule disabled" if name not in enabled else "no longer watched"
                    item = Judged(rule, version, segment, Verdict("not_watched"))
                    queued += await _transition(conn, project_id, item, "resolved", reason, now)
                await conn.execute(
                    "DELETE FROM alert_states WHERE project_id = $1 AND rule = $2 AND segment = $3",
                    project_id,
                    name,
                    segment,
                )
    return queued


# The webhooks the last "fired" of a rule and segment went to: its resolution goes there too, whatever the
# rule's webhooks are now (a receiver told "firing" must hear "resolved").
_FIRED_TO_SQL = """
SELECT DISTINCT d.url, d.format FROM alert_deliveries d
WHERE d.event_id = (SELECT max(id) FROM alert_events
                    WHERE project_id = $1 AND rule = $2 AND segment = $3 AND kind = 'fired')
"""


async def _transition(conn: Any, project_id: str, item: Judged, kind: str, reason: str, now: datetime) -> int:
    details = {"reason": reason, "evaluation": item.verdict.as_json()}
    event_id = await conn.fetchval(
        "INSERT INTO alert_events (project_id, rule, rule_version, segment, kind, at, details) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) RETURNING id",
        project_id,
        item.rule.name,
        item.version,
        item.segment,
        kind,
        now,
        orjson.dumps(details).decode(),
    )
    targets = [(hook.url, hook.format) for hook in item.rule.notify]
    if kind == "resolved":
        targets = [
            (r["url"], r["format"]) for r in await conn.fetch(_FIRED_TO_SQL, project_id, item.rule.name, item.segment)
        ]
    body, text = payloads(event_id, kind, project_id, item, now, reason)
    for url, fmt in targets:
        delivery_id = str(uuid.uuid4())
        await conn.execute(
            "INSERT INTO alert_deliveries (id, event_id, project_id, url, format, body) VALUES ($1, $2, $3, $4, $5, $6)",
            uuid.UUID(delivery_id),
            event_id,
            project_id,
            url,
            fmt,
            _encoded(fmt, delivery_id, body, text),
        )
    log.info("alert %s %s for project %s, segment %r (%s)", item.rule.name, kind, project_id, item.segment, reason)
    return len(targets)


def from_jsonb(value: Any) -> Any:
    """A jsonb column's value (asyncpg hands it over as text without a codec)."""
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value


class FactsChanges(Protocol):
    """What the evaluator needs of the stage-state updater (:class:`query.facts.updater.StageStateUpdater`):
    whether it leads, and which projects' serving facts changed. Named here, not imported: alerts read the
    facts as the KPIs do and depend on the builds, never on the loop that writes them."""

    leader: bool
    facts_changed: asyncio.Event

    def take_changes(self) -> set[str]: ...


class AlertEvaluator(Background):
    """Judges the rules of each project whose facts changed (and all of them every ``every_s``)."""

    name = "alert-evaluator"

    def __init__(
        self,
        stores: Stores,
        metrics: Metrics,
        updater: FactsChanges,
        *,
        every_s: float = 10.0,
        on_queued: Any = None,
    ):
        super().__init__()
        self.stores = stores
        self.metrics = metrics
        self.updater = updater
        self.every_s = every_s
        self.on_queued = on_queued or (lambda: None)
        self.last_error: str | None = None
        self._shown: dict[str, set[tuple[str, str, str]]] = {}
        self.min_round_s = 0.5

    def _forget_gauges(self) -> None:
        for shown in self._shown.values():
            for labels in shown:
                self.metrics.alert_firing.remove(*labels)
        self._shown = {}

    async def _run(self) -> None:
        next_full = last_round = 0.0
        while not self._stop.is_set():
            timeout = max(0.0, next_full - time.monotonic())
            try:
                await asyncio.wait_for(self.updater.facts_changed.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            # Under ingest the facts change at every poll (0.2 s): a round at most every min_round_s, judging
            # every project changed meanwhile, keeps the judging's reads off the KPIs' and the updater's back.
            await asyncio.sleep(max(0.0, last_round + self.min_round_s - time.monotonic()))
            last_round = time.monotonic()
            changed = self.updater.take_changes()
            if not self.updater.leader:  # the leader's evaluator judges; this one waits to take over
                self._forget_gauges()  # the leader's are the ones that count
                await asyncio.sleep(1.0)
                continue
            try:
                with_rules = {r["project_id"] for r in await self.stores.pg.fetch(PROJECTS_SQL)}
                if time.monotonic() >= next_full:
                    next_full = time.monotonic() + self.every_s
                    projects = with_rules
                else:
                    projects = changed & with_rules
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - never dies: logged, counted, retried on the next change
                self._failed("alert evaluation failed", exc)
                await asyncio.sleep(1.0)
                continue
            for project_id in sorted(projects):
                try:  # one project's failure (its store, a rule it cannot judge) holds no other project back
                    await self.evaluate(project_id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - retried on its next change, or the next round
                    self._failed(f"alert evaluation of project {project_id} failed", exc)

    def _failed(self, what: str, exc: Exception) -> None:
        log.exception(what)
        self.metrics.alert_evaluation_errors.inc()
        self.last_error = f"{exc!r}"[:500]

    async def evaluate(self, project_id: str) -> int:
        """Judge one project's rules now and record what changed; the notifications queued."""
        now = datetime.now(timezone.utc)
        rules, judged = await judge_project(self.stores, project_id, now)
        if judged is None:
            return 0
        queued = await record(self.stores.pg, project_id, rules, judged, now)
        # The gauge follows the stored states (a state no longer watched leaves it).
        states = await self.stores.pg.fetch(
            "SELECT rule, segment, state FROM alert_states WHERE project_id = $1", project_id
        )
        shown = {(project_id, r["rule"], r["segment"] or "*all*"): r["state"] == "firing" for r in states}
        for labels in self._shown.get(project_id, set()) - shown.keys():
            self.metrics.alert_firing.remove(*labels)
        for labels, firing in shown.items():
            self.metrics.alert_firing.labels(*labels).set(1 if firing else 0)
        self._shown[project_id] = set(shown)
        if queued:
            self.on_queued()
        return queued
