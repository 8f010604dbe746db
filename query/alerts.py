"""Alerts: every rule judged as the stage facts change, each transition recorded with its notifications.

**When a rule fires** (docs/alerts.md). A rule watches one stage's metric over the entries of its last
``window_days`` UTC days, per segment. It is judged on what is decided: the customers in progress could still
go either way, so the metric's final value lies between two bounds (docs/kpis.md, "Decided and undecided"),
and the rule fires only when even the best bound misses the threshold, with at least ``min_decided``
customers converted or dropped. It resolves only when even the worst bound meets ``recover_at`` (5 % better
than the threshold unless the rule says): a stage on the edge does not flap.

**When it is judged.** The stage-state updater (query/state_updater.py) says which projects' serving facts
changed; their rules are judged right after (seconds from an event to a webhook, not an hourly job), and
every project's rules every ``every_s`` as well, because time alone decides customers (an entry whose
conversion window closes becomes a drop). The evaluator works where the updater leads (one across replicas).

**Nothing is lost, nothing is sent twice for one transition.** A transition updates the rule's state, records
the event and queues one notification per webhook in the outbox, in one PostgreSQL transaction, under the
state row's lock: a crash leaves all of it or none, and two evaluators cannot both fire.
query/alert_delivery.py delivers the outbox.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from typing import Any

import orjson

from journeys import definitions
from journeys.alert_rules import HIGHER_IS_BETTER, AlertRule, thresholds, validate_alert_rule
from journeys.metrics import Metrics
from journeys.stores import Stores
from query.kpis import ALL, KpiRequest, outcome, raw_stages
from query.reads import iso
from query.stage_state import DAY_MS, Definitions, consistent_facts, lock_pool
from query.state_updater import StageStateUpdater, current_definitions, definitions_of_build, serving_build

log = logging.getLogger(__name__)

PROJECTS_SQL = "SELECT DISTINCT project_id FROM definitions WHERE kind = 'alert'"


@dataclass(frozen=True)
class Verdict:
    """A rule's metric for one segment, judged: ``status`` is the outcome at the threshold (``below_target``,
    ``met``, ``undecided``) or why there is none (``no_data``, ``too_few_decided``, ``no_threshold``,
    ``not_computed``); ``fire`` and ``recover`` say what a rule in each state should do."""

    status: str
    fire: bool = False
    recover: bool = False
    numbers: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, **self.numbers}


def _float(value: Fraction | None) -> float | None:
    return None if value is None else float(value)


def judge(rule: AlertRule, raw: dict[str, Any], limits: tuple[Fraction, Fraction] | None) -> Verdict:
    """Judge one segment's raw stage counts (query/kpis.py ``raw_stages``) against the rule's limits."""
    converted, dropped, in_progress = raw["converted"], raw["dropped"], raw["in_progress"]
    decided, entered = converted + dropped, converted + dropped + in_progress
    counts = {"entered": entered, "converted": converted, "dropped": dropped, "in_progress": in_progress}
    if limits is None:
        return Verdict("no_threshold", numbers=counts)
    goal, recover_at = limits
    numbers: dict[str, Any] = {"threshold": float(goal), "recover_at": float(recover_at), **counts}
    bounds: tuple[Fraction, Fraction] | None = None
    actual: Fraction | None = None
    if rule.metric == "conversion_rate" and entered:
        bounds = Fraction(converted, entered), Fraction(converted + in_progress, entered)
        actual = Fraction(converted, decided) if decided else None
    elif rule.metric == "drop_off_rate" and entered:
        bounds = Fraction(dropped, entered), Fraction(dropped + in_progress, entered)
        actual = Fraction(dropped, decided) if decided else None
    elif rule.metric == "median_days_to_convert" and raw["median_bounds_ms"] is not None:
        low_ms, high_ms = raw["median_bounds_ms"]
        bounds = Fraction(low_ms, DAY_MS), Fraction(high_ms, DAY_MS)
        actual = None if raw["median_ms"] is None else Fraction(raw["median_ms"], DAY_MS)
    elif rule.metric == "in_progress":
        bounds = Fraction(in_progress), Fraction(in_progress)
        actual = Fraction(in_progress)
    if bounds is None:
        return Verdict("no_data", numbers=numbers)
    numbers.update(actual=_float(actual), lowest=float(bounds[0]), highest=float(bounds[1]))
    # In progress is a count of now, not an outcome: nothing to wait for. Every other metric needs enough
    # decided customers, so a quiet hour (two drops out of two) pages nobody.
    if rule.metric != "in_progress" and decided < rule.min_decided:
        return Verdict("too_few_decided", numbers=numbers)
    higher = rule.metric in HIGHER_IS_BETTER
    status, _ = outcome(goal, *bounds, higher_is_better=higher)
    recovered, _ = outcome(recover_at, *bounds, higher_is_better=higher)
    return Verdict(status, fire=status == "below_target", recover=recovered == "met", numbers=numbers)


@dataclass(frozen=True)
class Judged:
    rule: AlertRule
    version: int
    segment: str  # ALL ("") for all customers
    verdict: Verdict


async def judge_project(
    stores: Stores, project_id: str, now: datetime
) -> tuple[list[tuple[AlertRule, int]], list[Judged]]:
    """Every enabled rule of the project judged on the serving build of its facts (what ``/v1/kpis`` reads),
    one consistent state of them per rule. Also returns every rule with its version."""
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
) -> list[Judged]:
    latest, build = await asyncio.gather(
        current_definitions(stores.pg, project_id), serving_build(stores.pg, project_id)
    )
    served: Definitions | None = latest
    if build.fingerprint != latest.fingerprint:
        served = None if build.number == 0 else await definitions_of_build(stores.pg, project_id, build.fingerprint)
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
        request = KpiRequest(
            project_id=project_id,
            journey_map=mv.compiled.map,
            map_version=mv.version,
            build=build.number,
            order=mv.compiled.order,
            segments=computed,
            first_day=now.date() - timedelta(days=rule.window_days - 1),
            last_day=now.date(),
            now=now,
        )
        raws = await raw_stages(stores.clickhouse, request)
        stage = mv.compiled.order.index(rule.stage)
        limits = thresholds(rule, mv.compiled.map)
        for segment in computed:
            judged.append(Judged(rule, version, segment, judge(rule, raws[segment][stage], limits)))
    return judged


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
                "SELECT rule, segment, state FROM alert_states WHERE project_id = $1 FOR UPDATE", project_id
            )
            states = {(r["rule"], r["segment"]): r["state"] for r in rows}
            for item in judged:
                key = (item.rule.name, item.segment)
                was = states.pop(key, "ok")
                now_state = was
                if was == "ok" and item.verdict.fire:
                    now_state = "firing"
                elif was == "firing" and item.verdict.recover:
                    now_state = "ok"
                await conn.execute(
                    "INSERT INTO alert_states (project_id, rule, segment, state, since, rule_version, evaluated_at, last) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $5, $7::jsonb) ON CONFLICT (project_id, rule, segment) DO UPDATE "
                    "SET state = EXCLUDED.state, rule_version = EXCLUDED.rule_version, "
                    "evaluated_at = EXCLUDED.evaluated_at, last = EXCLUDED.last, "
                    "since = CASE WHEN alert_states.state = EXCLUDED.state THEN alert_states.since ELSE EXCLUDED.since END",
                    project_id,
                    item.rule.name,
                    item.segment,
                    now_state,
                    now,
                    item.version,
                    orjson.dumps(item.verdict.as_json()).decode(),
                )
                if now_state != was:
                    kind = "fired" if now_state == "firing" else "resolved"
                    queued += await _transition(
                        conn, project_id, item, kind, "recovered" if kind == "resolved" else "below", now
                    )
            # What is no longer watched (a rule disabled, a segment gone from it): resolved if it was firing.
            by_name = {rule.name: (rule, version) for rule, version in rules}
            for (name, segment), state in states.items():
                if state == "firing" and name in by_name:
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
    body, text = payloads(event_id, kind, project_id, item, now, reason)
    for webhook in item.rule.notify:
        delivery_id = str(uuid.uuid4())
        await conn.execute(
            "INSERT INTO alert_deliveries (id, event_id, project_id, url, format, body) VALUES ($1, $2, $3, $4, $5, $6)",
            uuid.UUID(delivery_id),
            event_id,
            project_id,
            webhook.url,
            webhook.format,
            _encoded(webhook.format, delivery_id, body, text),
        )
    log.info("alert %s %s for project %s, segment %r (%s)", item.rule.name, kind, project_id, item.segment, reason)
    return len(item.rule.notify)


class AlertEvaluator:
    """Judges the rules of each project whose facts changed (and all of them every ``every_s``)."""

    def __init__(
        self,
        stores: Stores,
        metrics: Metrics,
        updater: StageStateUpdater,
        *,
        every_s: float = 10.0,
        on_queued: Any = None,
    ):
        self.stores = stores
        self.metrics = metrics
        self.updater = updater
        self.every_s = every_s
        self.on_queued = on_queued or (lambda: None)
        self.last_error: str | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._shown: dict[str, set[tuple[str, str, str]]] = {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alert-evaluator")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        next_full = 0.0
        while not self._stop.is_set():
            timeout = max(0.0, next_full - time.monotonic())
            try:
                await asyncio.wait_for(self.updater.facts_changed.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            changed = self.updater.take_changes()
            if not self.updater.leader:  # the leader's evaluator judges; this one waits to take over
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
