"""One customer's journey through a map: which stage each touchpoint put them in, and how they moved.

Definitions (also in docs/journeys.md):

* An event is a **touchpoint of stage S** when it matches a touchpoint rule of S. Rules are tried in the
  map's order and the first match wins. Events matching no rule stay in the timeline with no stage.
* **Sentiment** of a touchpoint: the rule's fixed sentiment; or, for a rule reading a numeric property,
  positive at or above its threshold, negative at or below the other, neutral between. Failing those, the
  sentiment the event was sent with, if any.
* A **transition** happens when a touchpoint's stage differs from the customer's current stage:
  ``first`` (the first stage they enter), ``forward`` (to the next stage), ``skip`` (forward over one or
  more stages, listed in ``skipped``), ``regression`` (back to an earlier stage). ``repeat`` is true when
  the stage entered had been visited before.
* **Current stage**: the stage of the last transition; **time in current stage**: from that transition to
  now.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from query.maps import MISSING, JourneyMap, SentimentFromProperty, Touchpoint, holds


def _as_set(value: str | list[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset([value] if isinstance(value, str) else value)


def property_value(properties: dict[str, Any], path: str) -> Any:
    """``a.b`` looks into nested objects; a key that itself contains a dot is found first."""
    if path in properties:
        return properties[path]
    current: Any = properties
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return MISSING
        current = current[part]
    return current


@dataclass(frozen=True)
class _Rule:
    touchpoint: Touchpoint
    events: frozenset[str] | None
    channels: frozenset[str] | None
    types: frozenset[str] | None

    def matches(self, event: dict[str, Any]) -> bool:
        if self.events is not None and event["event"] not in self.events:
            return False
        if self.channels is not None and event["channel"] not in self.channels:
            return False
        if self.types is not None and event["type"] not in self.types:
            return False
        properties = event.get("properties") or {}
        return all(holds(c.op, property_value(properties, c.property), c.value) for c in self.touchpoint.match.where)

    def sentiment(self, event: dict[str, Any]) -> str:
        rule = self.touchpoint.sentiment
        if isinstance(rule, str):
            return rule
        if isinstance(rule, SentimentFromProperty):
            value = property_value(event.get("properties") or {}, rule.property)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if value >= rule.positive_at_least:
                    return "positive"
                if value <= rule.negative_at_most:
                    return "negative"
                return "neutral"
        return event.get("sentiment") or ""


class CompiledMap:
    """A journey map prepared for assigning events: rule lookups as sets, stage order as indexes."""

    def __init__(self, journey_map: JourneyMap, version: int):
        self.map = journey_map
        self.version = version
        self.order = journey_map.ordered_stage_ids()
        self.index = {stage: i for i, stage in enumerate(self.order)}
        self.names = {s.id: s.name for s in journey_map.stages}
        self.rules = [
            _Rule(tp, _as_set(tp.match.event), _as_set(tp.match.channel), _as_set(tp.match.type))
            for tp in journey_map.touchpoints
        ]

    def assign(self, event: dict[str, Any]) -> tuple[_Rule | None, str | None]:
        for rule in self.rules:
            if rule.matches(event):
                return rule, rule.touchpoint.stage
        return None, None


def _parse(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def transitions_of(compiled: CompiledMap, touches: Iterable[tuple[Any, str, str | None, str]]) -> list[dict[str, Any]]:
    """The stage transitions of a customer's staged touchpoints ``(time, stage, touchpoint id, channel)``,
    in journey order. The one definition of transitions: the journey endpoint and the KPI state use it."""
    transitions: list[dict[str, Any]] = []
    visited: set[str] = set()
    current: str | None = None
    for time, stage, touchpoint, channel in touches:
        if stage == current:
            continue
        position = compiled.index[stage]
        if current is None:
            kind, skipped = "first", compiled.order[:position]
        else:
            step = position - compiled.index[current]
            kind = "forward" if step == 1 else "skip" if step > 1 else "regression"
            skipped = compiled.order[compiled.index[current] + 1 : position] if step > 1 else []
        transitions.append(
            {
                "time": time,
                "from": current,
                "to": stage,
                "kind": kind,
                "repeat": stage in visited,
                "skipped": skipped,
                "touchpoint": touchpoint,
                "channel": channel,
            }
        )
        visited.add(stage)
        current = stage
    return transitions


def build_journey(events: list[dict[str, Any]], compiled: CompiledMap, now: datetime | None = None) -> dict[str, Any]:
    """The journey of one customer from their events (time order, each once)."""
    now = now or datetime.now(timezone.utc)
    touchpoints: list[dict[str, Any]] = []
    for event in events:
        rule, stage = compiled.assign(event)
        touchpoints.append(
            {
                "time": event["timestamp"],
                "message_id": event["message_id"],
                "type": event["type"],
                "event": event["event"],
                "channel": event["channel"],
                "touchpoint": rule.touchpoint.id if rule else None,
                "stage": stage,
                "sentiment": rule.sentiment(event) if rule else (event.get("sentiment") or ""),
            }
        )
    transitions = transitions_of(
        compiled, ((t["time"], t["stage"], t["touchpoint"], t["channel"]) for t in touchpoints if t["stage"])
    )
    entered_at = transitions[-1]["time"] if transitions else None
    return {
        "map": {"name": compiled.map.name, "version": compiled.version},
        "stages": [{"id": s, "name": compiled.names[s]} for s in compiled.order],
        "touchpoints": touchpoints,
        "transitions": transitions,
        "current_stage": transitions[-1]["to"] if transitions else None,
        "current_stage_entered_at": entered_at,
        "time_in_current_stage_seconds": None
        if entered_at is None
        else round(max(0.0, (now - _parse(entered_at)).total_seconds()), 3),
        "non_linear": {
            "repeats": sum(1 for t in transitions if t["repeat"]),
            "regressions": sum(1 for t in transitions if t["kind"] == "regression"),
            "skips": sum(1 for t in transitions if t["kind"] == "skip"),
        },
    }
