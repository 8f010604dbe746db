"""A journey map's touchpoint rules as one ClickHouse expression: the matching rule of each event, in SQL.

The per-customer Python path (:mod:`query.journey`) and the set-based KPI path must assign every event to
the same touchpoint, so this compiles exactly the semantics of ``CompiledMap.assign`` and
``query.maps.holds`` (tests compare the two on generated events):

* rules are tried in map order, the first match wins; the expression yields its 1-based index, 0 for none;
* ``event``/``channel``/``type`` lists are set membership on the event's columns;
* a ``where`` property ``a.b`` is the top-level key ``"a.b"`` if the properties have one, else the nested
  path ``a`` → ``b``;
* equality is JSON equality (a string never equals a number; ``1`` equals ``1.0``; booleans only equal
  booleans), numeric comparisons hold only for numbers, ``contains`` is substring for strings and
  JSON-equal membership for arrays, and a missing value satisfies only ``not_exists``/``not_equals``/
  ``not_in``.

Every value from the map — names, paths, expected values — is a bound query parameter, never SQL text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from query.maps import Condition, JourneyMap

_NUMBER_TYPES = "('Int64', 'UInt64', 'Double')"


class SqlParams:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.values: dict[str, Any] = {}

    def bind(self, value: Any, kind: str) -> str:
        name = f"{self.prefix}{len(self.values)}"
        self.values[name] = value
        return f"{{{name}:{kind}}}"


def _json_text(p: SqlParams, value: str) -> str:
    """A string as ClickHouse writes it in JSON (:func:`_typed_equals`)."""
    return f"JSONExtractRaw({p.bind(json.dumps(value), 'String')})"


def _typed_equals(p: SqlParams, doc: str, args: str, expected: Any) -> str:
    """The JSON value at ``doc[args]`` equals ``expected`` (JSON equality).

    A string is compared as JSON text, both sides written by ClickHouse (``JSONExtractRaw`` writes a string
    value with its own escaping, whatever the sender's): one parse of the document per row, where asking its
    type and then its string took two (``JSONExtractString`` gives numbers and booleans as text too)."""
    kind = f"JSONType({doc}{args})"
    if isinstance(expected, bool):
        return f"({kind} = 'Bool' AND JSONExtractBool({doc}{args}) = {p.bind(int(expected), 'UInt8')})"
    if isinstance(expected, (int, float)):
        return f"({kind} IN {_NUMBER_TYPES} AND JSONExtractFloat({doc}{args}) = {p.bind(float(expected), 'Float64')})"
    if isinstance(expected, str):
        return f"(JSONExtractRaw({doc}{args}) = {_json_text(p, expected)})"
    return "0"  # validation only lets scalars through for these operators


def _any_equals(p: SqlParams, doc: str, args: str, expected: list[Any]) -> str:
    """The JSON value at ``doc[args]`` equals one of ``expected``: the strings among them in one test."""
    texts = [_json_text(p, e) for e in expected if isinstance(e, str)]
    tests = [f"has([{', '.join(texts)}], JSONExtractRaw({doc}{args}))"] if texts else []
    tests += [_typed_equals(p, doc, args, e) for e in expected if not isinstance(e, str)]
    return " OR ".join(tests) or "0"


def holds_sql(
    p: SqlParams, op: str, args: str, expected: Any, doc: str = "properties", present: str | None = None
) -> str:
    """``op`` holds for the JSON value at ``doc[args]`` (``present``: whether there is one; by default none is
    asked: every test below implies it, a missing value's type being ``'Null'`` and its text ``''``, and a
    ``JSONHas`` would parse the document once more per row)."""
    kind = f"JSONType({doc}{args})"

    def given(test: str) -> str:
        return f"({present} AND ({test}))" if present else f"({test})"

    if op in ("exists", "not_exists"):
        found = given(f"{kind} != 'Null'")
        return found if op == "exists" else f"NOT {found}"
    if op in ("equals", "not_equals"):
        found = given(_typed_equals(p, doc, args, expected))
        return found if op == "equals" else f"NOT {found}"
    if op in ("in", "not_in"):
        found = given(_any_equals(p, doc, args, list(expected)))
        return found if op == "in" else f"NOT {found}"
    if op == "contains":
        if isinstance(expected, str):
            needle = p.bind(expected, "String")
            in_text = f"({kind} = 'String' AND position(JSONExtractString({doc}{args}), {needle}) > 0)"
        else:
            in_text = "0"
        member = _typed_equals(p, "item", "", expected)
        in_array = f"({kind} = 'Array' AND arrayExists(item -> {member}, JSONExtractArrayRaw({doc}{args})))"
        return given(f"{in_text} OR {in_array}")
    if op in (">", ">=", "<", "<="):
        if isinstance(expected, bool) or not isinstance(expected, (int, float)):
            return "0"
        bound = p.bind(float(expected), "Float64")
        return given(f"{kind} IN {_NUMBER_TYPES} AND JSONExtractFloat({doc}{args}) {op} {bound}")
    raise ValueError(f"unknown operator {op!r}")


def property_condition(p: SqlParams, path: str, build: Callable[[str], str]) -> str:
    """``build(args)`` for the property at ``path``: ``args`` is the JSON path arguments (``, 'a', 'b'``) of
    ``properties``. A top-level key that itself contains the dots wins over the nested path, as in
    ``query.journey.property_value``."""
    literal = f", {p.bind(path, 'String')}"
    if "." not in path:
        return build(literal)
    nested = "".join(f", {p.bind(part, 'String')}" for part in path.split("."))
    return f"if(JSONHas(properties{literal}), {build(literal)}, {build(nested)})"


def _condition(p: SqlParams, condition: Condition) -> str:
    return property_condition(p, condition.property, lambda args: holds_sql(p, condition.op, args, condition.value))


def _member(p: SqlParams, column: str, value: str | list[str] | None) -> str | None:
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    return f"{column} IN {p.bind(values, 'Array(String)')}"


def touchpoint_conditions_sql(journey_map: JourneyMap, prefix: str = "m") -> tuple[list[str], dict[str, Any]]:
    """``(conditions, parameters)``: per touchpoint, in map order, whether an event row matches its rule (columns
    ``event``, ``channel``, ``type``, ``properties``)."""
    p = SqlParams(prefix)
    conditions = []
    for touchpoint in journey_map.touchpoints:
        match = touchpoint.match
        parts = [
            part
            for part in (
                _member(p, "event", match.event),
                _member(p, "channel", match.channel),
                _member(p, "type", match.type),
            )
            if part is not None
        ]
        parts += [_condition(p, c) for c in match.where]
        conditions.append(f"({' AND '.join(parts) or '1'})")
    return conditions, p.values


def rule_index_sql(
    journey_map: JourneyMap, prefix: str = "m", numbers: list[int] | None = None
) -> tuple[str, dict[str, Any]]:
    """``(expression, parameters)``: the 1-based index of the first touchpoint rule an event row matches
    (columns ``event``, ``channel``, ``type``, ``properties``), 0 when none does; or, given ``numbers`` (one per
    rule, in map order), the number of that rule."""
    conditions, values = touchpoint_conditions_sql(journey_map, prefix)
    if not conditions:
        return "0", values
    numbers = numbers or list(range(1, len(conditions) + 1))
    branches = [f"{condition}, {number}" for condition, number in zip(conditions, numbers)]
    return f"multiIf({', '.join(branches)}, 0)", values
