"""Journey maps and customer segments: the documents marketers author, and their validation.

A **journey map** is ordered stages, touchpoint rules that put a customer into a stage, optional sentiment
per touchpoint, and targets per stage (the "future state" that KPIs are compared against). A **segment** is
a named rule set over customer traits and first-touch facts; "all customers" is implicit.

Validation reports *every* problem at once, each as ``{"path": "stages[2].id", "reason": …}``, so an author
fixes a file in one pass. Shape errors come from pydantic; cross-references (duplicate ids, unknown stages,
cycles in ``after`` ordering) are checked here after the shape is right.
"""

from __future__ import annotations

import difflib
import re
import typing
from datetime import date
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from journeys.errors import JourneysError

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
SLUG_RULE = "must be 1-64 lowercase letters, digits, '-' or '_'"
SENTIMENTS = ("positive", "neutral", "negative")
#: Stages per map at most: far past the longest real lists (B2B maps run to ~12); a stage's index is stored in
#: 16 bits in the facts (migration 0006: stage UInt16, from_stage Int16).
MAX_STAGES = 100

#: Operators of touchpoint property conditions and segment rules.
OPERATORS = ("equals", "not_equals", "in", "not_in", "exists", "not_exists", "contains", ">", ">=", "<", "<=")
_NUMERIC = (">", ">=", "<", "<=")
LIST_OPERATORS = ("in", "not_in")
UNARY_OPERATORS = ("exists", "not_exists")

#: What segment rules may look at, besides ``traits.<name>`` (latest identify traits).
SEGMENT_FIELDS = ("first_channel", "first_utm_source", "first_utm_medium", "first_utm_campaign", "first_seen")


class DefinitionError(JourneysError):
    """A map or segment document is invalid; ``problems`` lists every one as ``{"path", "reason"}``."""

    def __init__(self, problems: list[dict[str, str]]):
        super().__init__("; ".join(f"{p['path']}: {p['reason']}" for p in problems))
        self.problems = problems


def _condition_problems(op: str, value: Any, path: str) -> list[dict[str, str]]:
    """The one place an operator and its value are checked, for map conditions and segment rules alike."""
    if op not in OPERATORS:
        return [{"path": f"{path}.op", "reason": f"unknown operator {op!r}; use one of {', '.join(OPERATORS)}"}]
    if op in UNARY_OPERATORS:
        return [] if value is None else [{"path": f"{path}.value", "reason": f"{op} takes no value"}]
    if value is None:
        return [{"path": f"{path}.value", "reason": f"{op} needs a value"}]
    if op in LIST_OPERATORS and not (isinstance(value, list) and value):
        return [{"path": f"{path}.value", "reason": f"{op} needs a non-empty list"}]
    if op in _NUMERIC and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return [{"path": f"{path}.value", "reason": f"{op} compares numbers: value must be a number"}]
    if op in ("equals", "not_equals", "contains") and isinstance(value, (list, dict)):
        return [{"path": f"{path}.value", "reason": f"{op} takes a single value (use in/not_in for lists)"}]
    return []


def _date_rule_problems(op: str, value: Any, path: str) -> list[dict[str, str]]:
    """first_seen compares calendar dates: ISO date strings, with the numeric operators meaning before/after."""
    if op == "contains":
        return [{"path": f"{path}.op", "reason": "first_seen is a date: use equals, in, <, <=, >, >= or exists"}]
    if op not in OPERATORS or op in UNARY_OPERATORS:
        return _condition_problems(op, value, path)
    values = value if op in LIST_OPERATORS and isinstance(value, list) else [value]
    if op in LIST_OPERATORS and not (isinstance(value, list) and value):
        return [{"path": f"{path}.value", "reason": f"{op} needs a non-empty list"}]
    for item in values:
        try:
            date.fromisoformat(str(item))
        except ValueError:
            return [{"path": f"{path}.value", "reason": "first_seen takes ISO dates, e.g. 2026-01-31"}]
    return []


def slug(value: str) -> str:
    """A document's name (a map, a segment, an alert rule, the map a rule names), or ``ValueError``."""
    if not SLUG.match(value):
        raise ValueError(SLUG_RULE)
    return value


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Condition(_Doc):
    """``{"property": "rating", "op": ">=", "value": 4}`` — a condition on an event's properties."""

    property: str = Field(min_length=1, max_length=255)
    op: str
    value: Any = None


class Match(_Doc):
    """Which events are this touchpoint: all given criteria must hold (a list means any of its values)."""

    event: Union[str, list[str], None] = None
    channel: Union[str, list[str], None] = None
    type: Union[str, list[str], None] = None
    where: list[Condition] = Field(default_factory=list)


class SentimentFromProperty(_Doc):
    """Sentiment read from a numeric property, e.g. a 1–5 rating: ≥ positive_at_least is positive,
    ≤ negative_at_most is negative, anything between is neutral."""

    property: str = Field(min_length=1, max_length=255)
    positive_at_least: float
    negative_at_most: float


class Touchpoint(_Doc):
    id: str
    stage: str
    description: str = ""
    match: Match
    sentiment: Union[Literal["positive", "neutral", "negative"], SentimentFromProperty, None] = None


class StageTarget(_Doc):
    """The future state for a stage. ``conversion_rate``: share of customers who reached this stage that
    go on to the next one; ``median_days_to_convert``: how fast."""

    conversion_rate: Annotated[float, Field(gt=0, le=1)] | None = None
    median_days_to_convert: Annotated[float, Field(gt=0)] | None = None


class Stage(_Doc):
    id: str
    name: str = Field(min_length=1, max_length=255)
    description: str = ""
    after: str | None = Field(default=None, description="Explicit ordering: the stage this one follows.")
    conversion_window_days: Annotated[float, Field(gt=0, le=3650)] = 30
    target: StageTarget | None = None


class JourneyMap(_Doc):
    name: str
    description: str = ""
    stages: list[Stage] = Field(max_length=MAX_STAGES)
    touchpoints: list[Touchpoint] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        return slug(value)

    def ordered_stage_ids(self) -> list[str]:
        """Stages in journey order: list order, re-arranged where a stage names the one it comes ``after``."""
        order, problems = _order_stages(self.stages)
        if problems:
            raise DefinitionError(problems)
        return order


class Rule(_Doc):
    """``{"field": "traits.plan", "op": "equals", "value": "b2b"}``."""

    field: str = Field(min_length=1, max_length=255)
    op: str
    value: Any = None


class Segment(_Doc):
    name: str
    description: str = ""
    match: Literal["all", "any"] = "all"
    rules: list[Rule]

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        slug(value)
        if value in ("all", "*"):
            raise ValueError(f"{value!r} is reserved for all customers")
        return value


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(document)"


def _is_union_member(part: Any) -> bool:
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part or part[:1].isupper())


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _not_text(document: Any, loc: tuple[Any, ...] = ()) -> list[dict[str, str]]:
    """Every string of ``document`` (keys too) that is not text: a lone surrogate, which YAML can spell but no event
    can hold, PostgreSQL cannot store and ClickHouse cannot be sent."""
    problems: list[dict[str, str]] = []
    if isinstance(document, str):
        if not _is_text(document):
            problems.append({"path": _path(loc), "reason": "not valid text (a lone UTF-16 surrogate, such as \\ud800)"})
    elif isinstance(document, dict):
        for key, value in document.items():
            if isinstance(key, str) and not _is_text(key):  # named by where it is: the error is JSON text too
                problems.append(
                    {"path": _path(loc), "reason": "a key here is not valid text (a lone UTF-16 surrogate)"}
                )
            else:
                problems += _not_text(value, (*loc, key))
    elif isinstance(document, list):
        for i, value in enumerate(document):
            problems += _not_text(value, (*loc, i))
    return problems


def _shape(model: type[BaseModel], document: Any) -> tuple[Any, list[dict[str, str]]]:
    if not isinstance(document, dict):
        return None, [{"path": "(document)", "reason": "must be a mapping (YAML/JSON object)"}]
    not_text = _not_text(document)
    if not_text:
        return None, not_text
    try:
        return model.model_validate(document), []
    except ValidationError as exc:
        problems: list[dict[str, str]] = []
        for err in exc.errors(include_url=False):
            # Each member of a union reports under its type's name (str, list[str], SentimentFromProperty…):
            # drop those from the path and keep the first reason per path.
            loc = tuple(p for p in err["loc"] if not _is_union_member(p))
            path = _path(loc)
            reason = err["msg"]
            if err["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str):
                reason = _unknown_key(model, loc)
            if not any(p["path"] == path for p in problems):
                problems.append({"path": path, "reason": reason})
        return None, problems


def _models_in(annotation: Any) -> set[type[BaseModel]]:
    """The models an annotation holds anywhere inside it (``list[Stage] | None`` → {Stage})."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {annotation}
    return {m for arg in typing.get_args(annotation) for m in _models_in(arg)}


def _unknown_key(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """ "unknown key 'evnt' — did you mean 'event'?": the keys allowed where it stands, the closest first."""
    models = {model}
    for part in loc[:-1]:
        if isinstance(part, str):
            models = {
                m
                for owner in models
                if part in owner.model_fields
                for m in _models_in(owner.model_fields[part].annotation)
            }
    allowed = sorted({f.alias or name for m in models for name, f in m.model_fields.items()})
    key = str(loc[-1])
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key {key!r}: {hint}allowed here: {', '.join(allowed)}" if allowed else f"unknown key {key!r}"


def _order_stages(stages: list[Stage]) -> tuple[list[str], list[dict[str, str]]]:
    ids = [s.id for s in stages]
    known = set(ids)
    problems = []
    for i, stage in enumerate(stages):
        if stage.after is not None and stage.after not in known:
            problems.append({"path": f"stages[{i}].after", "reason": f"unknown stage {stage.after!r}"})
        if stage.after == stage.id:
            problems.append({"path": f"stages[{i}].after", "reason": "a stage cannot come after itself"})
    if problems:
        return [], problems
    # Follow `after` links: a cycle is a chain that returns to where it started.
    for i, stage in enumerate(stages):
        seen = [stage.id]
        current = stage
        while current.after is not None:
            if current.after in seen:
                cycle = " → ".join([*seen[seen.index(current.after) :], current.after])
                return [], [{"path": f"stages[{i}].after", "reason": f"ordering cycle: {cycle}"}]
            seen.append(current.after)
            current = stages[ids.index(current.after)]
    followers: dict[str, list[str]] = {}
    for stage in stages:
        if stage.after is not None:
            followers.setdefault(stage.after, []).append(stage.id)
    order: list[str] = []

    def place(stage_id: str) -> None:
        order.append(stage_id)
        for follower in followers.get(stage_id, []):
            place(follower)

    for stage in stages:
        if stage.after is None:
            place(stage.id)
    return order, []


def _criterion(value: str | list[str] | None) -> frozenset[str] | None:
    return None if value is None else frozenset([value] if isinstance(value, str) else value)


def _covers(earlier: Match, later: Match) -> bool:
    """Every event ``later`` matches, ``earlier`` matches too: each of its criteria is absent or allows at
    least what ``later``'s allows, and each of its conditions is one of ``later``'s (a sufficient test: it
    never claims a shadow that is not there)."""
    for field_name in ("event", "channel", "type"):
        allows, wanted = _criterion(getattr(earlier, field_name)), _criterion(getattr(later, field_name))
        if allows is not None and (wanted is None or not wanted <= allows):
            return False
    later_conditions = [c.model_dump() for c in later.where]
    return all(c.model_dump() in later_conditions for c in earlier.where)


def map_warnings(journey_map: JourneyMap) -> list[dict[str, str]]:
    """What is valid but almost certainly not meant: a touchpoint rule that can never match, because an
    earlier rule matches every event it would (the first matching rule wins). Warnings, not errors: the
    map still applies."""
    warnings = []
    rules = journey_map.touchpoints

    def first_cover(match: Match, j: int) -> Touchpoint | None:
        return next((earlier for earlier in rules[:j] if _covers(earlier.match, match)), None)

    for j, later in enumerate(rules):
        whole = first_cover(later.match, j)
        if whole is not None:
            warnings.append(
                {
                    "path": f"touchpoints[{j}]",
                    "reason": f"touchpoint {later.id!r} can never match: {whole.id!r} comes first and matches every "
                    f"event it would (the first matching rule wins); move {later.id!r} above it or narrow {whole.id!r}",
                }
            )
            continue
        # Per event name: e.g. a repeat-order rule for [Order Completed, Store Purchase] below a rule taking
        # every Order Completed never sees a repeat online order.
        for name in sorted(_criterion(later.match.event) or ()):
            taker = first_cover(later.match.model_copy(update={"event": name}), j)
            if taker is not None:
                warnings.append(
                    {
                        "path": f"touchpoints[{j}].match.event",
                        "reason": f"touchpoint {later.id!r} never matches {name!r} events: {taker.id!r} comes first "
                        f"and takes every one it would (the first matching rule wins); move {later.id!r} above it",
                    }
                )
    return warnings


def validate_map(document: Any) -> JourneyMap:
    """Parse and check a journey map; raise :class:`DefinitionError` with every problem found."""
    journey_map, problems = _shape(JourneyMap, document)
    if problems:
        raise DefinitionError(problems)
    assert journey_map is not None
    if not journey_map.stages:
        problems.append({"path": "stages", "reason": "a map needs at least one stage"})
    stage_ids: set[str] = set()
    for i, stage in enumerate(journey_map.stages):
        if not SLUG.match(stage.id):
            problems.append({"path": f"stages[{i}].id", "reason": SLUG_RULE})
        if stage.id in stage_ids:
            problems.append({"path": f"stages[{i}].id", "reason": f"duplicate stage id {stage.id!r}"})
        stage_ids.add(stage.id)
    if not problems:
        problems.extend(_order_stages(journey_map.stages)[1])
    touchpoint_ids: set[str] = set()
    for i, touchpoint in enumerate(journey_map.touchpoints):
        path = f"touchpoints[{i}]"
        if not SLUG.match(touchpoint.id):
            problems.append({"path": f"{path}.id", "reason": SLUG_RULE})
        if touchpoint.id in touchpoint_ids:
            problems.append({"path": f"{path}.id", "reason": f"duplicate touchpoint id {touchpoint.id!r}"})
        touchpoint_ids.add(touchpoint.id)
        if touchpoint.stage not in stage_ids:
            problems.append({"path": f"{path}.stage", "reason": f"unknown stage {touchpoint.stage!r}"})
        match = touchpoint.match
        if match.event is None and match.channel is None and match.type is None and not match.where:
            problems.append({"path": f"{path}.match", "reason": "give at least one of event, channel, type, where"})
        for j, condition in enumerate(match.where):
            problems.extend(_condition_problems(condition.op, condition.value, f"{path}.match.where[{j}]"))
        sentiment = touchpoint.sentiment
        if isinstance(sentiment, SentimentFromProperty) and sentiment.negative_at_most >= sentiment.positive_at_least:
            problems.append({"path": f"{path}.sentiment", "reason": "negative_at_most must be below positive_at_least"})
    if problems:
        raise DefinitionError(problems)
    return journey_map


def validate_segment(document: Any) -> Segment:
    """Parse and check a segment; raise :class:`DefinitionError` with every problem found."""
    segment, problems = _shape(Segment, document)
    if problems:
        raise DefinitionError(problems)
    assert segment is not None
    if not segment.rules:
        problems.append({"path": "rules", "reason": "a segment needs at least one rule (all customers is implicit)"})
    for i, rule in enumerate(segment.rules):
        path = f"rules[{i}]"
        if not (rule.field.startswith("traits.") and len(rule.field) > 7) and rule.field not in SEGMENT_FIELDS:
            problems.append(
                {
                    "path": f"{path}.field",
                    "reason": f"unknown field {rule.field!r}; use traits.<name> or one of " + ", ".join(SEGMENT_FIELDS),
                }
            )
            continue
        if rule.field == "first_seen":
            found = _date_rule_problems(rule.op, rule.value, path)
        else:
            found = _condition_problems(rule.op, rule.value, path)
        problems.extend(found)
    if problems:
        raise DefinitionError(problems)
    return segment


MISSING = object()


def _rule_value(field: str, facts: dict[str, Any]) -> Any:
    if field.startswith("traits."):
        return facts.get("traits", {}).get(field[7:], MISSING)
    touch = facts.get("first_touch") or {}
    value = touch.get(field, MISSING)
    if field == "first_seen" and isinstance(value, str):
        return date.fromisoformat(value[:10])
    return MISSING if value == "" else value  # an empty channel/UTM field is an absent one


def holds(op: str, value: Any, expected: Any) -> bool:
    """One operator on one value, for touchpoint conditions and segment rules alike. ``value`` is
    ``MISSING`` when the property or trait is absent.

    Exact semantics: equality is JSON equality (``"5"`` is not ``5``); ``contains`` is substring for text
    and membership for lists; numeric operators hold only for numbers (or dates, for first_seen); a missing
    value matches only ``not_exists``, ``not_equals`` and ``not_in``.
    """
    if op == "exists":
        return value is not MISSING and value is not None
    if op == "not_exists":
        return value is MISSING or value is None
    if value is MISSING:
        return op in ("not_equals", "not_in")
    if op == "equals":
        return _same(value, expected)
    if op == "not_equals":
        return not _same(value, expected)
    if op == "in":
        return any(_same(value, e) for e in expected)
    if op == "not_in":
        return not any(_same(value, e) for e in expected)
    if op == "contains":
        if isinstance(value, str):
            return isinstance(expected, str) and expected in value
        return isinstance(value, list) and any(_same(item, expected) for item in value)
    if isinstance(value, bool) or isinstance(expected, bool):
        return False
    comparable = (isinstance(value, (int, float)) and isinstance(expected, (int, float))) or (
        isinstance(value, date) and isinstance(expected, date)
    )
    if not comparable:
        return False
    return {">": value > expected, ">=": value >= expected, "<": value < expected, "<=": value <= expected}[op]


def _same(value: Any, expected: Any) -> bool:
    # JSON equality: 1 == 1.0 (one JSON number), but "1" != 1 and true != 1.
    if isinstance(value, bool) or isinstance(expected, bool):
        return type(value) is type(expected) and value == expected
    if isinstance(value, (int, float)) and isinstance(expected, (int, float)):
        return value == expected
    return type(value) is type(expected) and value == expected


def rule_matches(rule: Rule, facts: dict[str, Any]) -> bool:
    """One segment rule against a customer's facts (``{"traits": {...}, "first_touch": {...}}``)."""
    expected = rule.value
    if rule.field == "first_seen" and rule.op not in UNARY_OPERATORS:
        expected = (
            [date.fromisoformat(v) for v in expected] if rule.op in LIST_OPERATORS else date.fromisoformat(expected)
        )
    return holds(rule.op, _rule_value(rule.field, facts), expected)


def segment_matches(segment: Segment, facts: dict[str, Any]) -> bool:
    results = (rule_matches(rule, facts) for rule in segment.rules)
    return all(results) if segment.match == "all" else any(results)
