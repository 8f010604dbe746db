"""The SQL form of a map's touchpoint rules assigns every event exactly as the Python form does."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import clickhouse_connect
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from query.maps import DefinitionError, validate_map, validate_segment
from query.journey import CompiledMap
from query.facts.rule_index import rule_index_sql

# Small pools that collide on purpose ("1" vs 1 vs 1.0 vs true): the cases where JSON equality and a
# sloppy SQL translation disagree.
_text = st.one_of(
    st.sampled_from(["1", "1.0", "true", "null", "", "a", "a.b", "é", "a/b", "😀", 'q"', "\\", "\n"]),
    st.text(alphabet="ab.1é'\"{}/\\😀\n", max_size=4),
)
_number = st.one_of(
    st.sampled_from([0, 1, 1.0, -1, 2.5, 10]),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
)
_scalar = st.one_of(_text, _number, st.booleans())
_json = st.one_of(_scalar, st.none(), st.lists(_scalar, max_size=3))
_KEYS = ["a", "b", "a.b", "n", "tags"]
_properties = st.dictionaries(
    st.sampled_from(_KEYS),
    st.one_of(_json, st.dictionaries(st.sampled_from(["b", "c"]), _json, max_size=2)),
    max_size=4,
)


# How a sender writes a JSON document: as orjson does (UTF-8 as is), as Python's json module does (every
# non-ASCII character escaped, emoji as surrogate pairs), or with escaped slashes as PHP's json_encode does. A
# string is equal whatever its escaping (tests the SQL's comparison of strings as JSON text).
_WRITERS: list[Callable[[Any], str]] = [
    lambda d: orjson.dumps(d).decode(),
    json.dumps,
    lambda d: json.dumps(d, ensure_ascii=False).replace("/", "\\/"),  # "/" occurs in JSON only within strings
]
_writer = st.sampled_from(range(len(_WRITERS)))


@st.composite
def _condition(draw):  # type: ignore[no-untyped-def]
    prop = draw(st.sampled_from(_KEYS + ["a.c", "missing", "a.b.c"]))
    op = draw(
        st.sampled_from(
            ["equals", "not_equals", "in", "not_in", "exists", "not_exists", "contains", ">", ">=", "<", "<="]
        )
    )
    if op in ("exists", "not_exists"):
        return {"property": prop, "op": op}
    if op in ("in", "not_in"):
        return {"property": prop, "op": op, "value": draw(st.lists(_scalar, min_size=1, max_size=3))}
    if op in (">", ">=", "<", "<="):
        return {"property": prop, "op": op, "value": draw(_number)}
    return {"property": prop, "op": op, "value": draw(_scalar)}


@st.composite
def _touchpoint(draw, i: int):  # type: ignore[no-untyped-def]
    match: dict = {}
    if draw(st.booleans()):
        match["event"] = draw(st.sampled_from(["Buy", ["Buy", "View"], "View"]))
    if draw(st.booleans()):
        match["channel"] = draw(st.sampled_from(["web", ["web", "store"]]))
    if draw(st.booleans()):
        match["type"] = draw(st.sampled_from(["track", "page"]))
    match["where"] = draw(st.lists(_condition(), max_size=2))
    if not match["where"] and len(match) == 1:
        match["event"] = "Buy"
    return {"id": f"t{i}", "stage": "s", "match": match}


@st.composite
def _case(draw):  # type: ignore[no-untyped-def]
    touchpoints = [draw(_touchpoint(i)) for i in range(draw(st.integers(1, 4)))]
    events = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["Buy", "View", "Other"]),
                st.sampled_from(["web", "store", "email"]),
                st.sampled_from(["track", "page"]),
                _properties,
                _writer,
            ),
            min_size=1,
            max_size=12,
        )
    )
    return {"name": "m", "stages": [{"id": "s", "name": "S"}], "touchpoints": touchpoints}, events


_Event = tuple[str, str, str, dict[str, Any], int]  # event, channel, type, properties, writer (_WRITERS)


def _assigned(stores, journey_map: Any, events: list[_Event]) -> tuple[list[int], list[int]]:  # type: ignore[no-untyped-def]
    """(the rule each event gets from the rule index SQL, its properties written by its writer; from Python)."""
    compiled = CompiledMap(journey_map, 1)
    expected = []
    for name, channel, kind, props, _ in events:
        rule, _ = compiled.assign({"event": name, "channel": channel, "type": kind, "properties": props})
        expected.append(0 if rule is None else compiled.rules.index(rule) + 1)
    expression, params = rule_index_sql(journey_map)
    client = clickhouse_connect.get_client(dsn=stores.settings.effective_clickhouse_url)
    try:
        rows = client.query(
            f"SELECT i, {expression} FROM ("
            "  SELECT i, {n:Array(String)}[i] AS event, {c:Array(String)}[i] AS channel,"
            "         {t:Array(String)}[i] AS type, {p:Array(String)}[i] AS properties"
            "  FROM (SELECT arrayJoin(range(1, length({n:Array(String)}) + 1)) AS i)) ORDER BY i",
            parameters={
                **params,
                "n": [e[0] for e in events],
                "c": [e[1] for e in events],
                "t": [e[2] for e in events],
                "p": [_WRITERS[e[4]](e[3]) for e in events],
            },
        ).result_rows
    finally:
        client.close()
    return [r[1] for r in rows], expected


def _documents(documents: list[tuple[dict[str, Any], int]]) -> list[_Event]:
    """Events that are only their properties (and their writer)."""
    return [("", "", "", d, w) for d, w in documents]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(case=_case())
def test_sql_and_python_assign_every_event_to_the_same_rule(stores, case) -> None:  # type: ignore[no-untyped-def]
    document, events = case
    assigned, expected = _assigned(stores, validate_map(document), events)
    assert assigned == expected, (document["touchpoints"], events)


@st.composite
def _condition_case(draw):  # type: ignore[no-untyped-def]
    condition = draw(_condition())
    path = condition["property"]
    events = []
    for _ in range(draw(st.integers(1, 10))):
        props = draw(_properties)
        value = draw(_json)
        if "value" in condition and draw(st.booleans()):  # the very value the condition names, to hit equality
            named = condition["value"]
            value = draw(st.sampled_from(named)) if isinstance(named, list) else named
        choice = draw(st.integers(0, 3))
        if choice == 0:  # the literal key, dots and all
            props[path] = value
        elif choice == 1 and "." in path:  # the nested path
            head, *middle, last = path.split(".")
            node: dict[str, Any] = {}
            props[head] = node
            for part in middle:
                node = node.setdefault(part, {})
            node[last] = value
        events.append((props, draw(_writer)))
    return condition, events


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(case=_condition_case())
def test_every_operator_means_the_same_in_sql(stores, case) -> None:  # type: ignore[no-untyped-def]
    """One condition at a time, on properties that mostly contain its path: the operators' semantics."""
    condition, events = case
    journey_map = validate_map(
        {
            "name": "m",
            "stages": [{"id": "s", "name": "S"}],
            "touchpoints": [{"id": "t", "stage": "s", "match": {"where": [condition]}}],
        }
    )
    assigned, expected = _assigned(stores, journey_map, _documents(events))
    assert assigned == expected, (condition, events)


_TRICKY = ["é", "😀", "a/b", 'q"', "\\", "a\nb", "\u2028", "\x01", "", "1", "true"]


def _one_rule_per_value(op: str, values: list[Any]) -> Any:
    return validate_map(
        {
            "name": "m",
            "stages": [{"id": "s", "name": "S"}],
            "touchpoints": [
                {"id": f"t{i}", "stage": "s", "match": {"where": [{"property": "k", "op": op, "value": value}]}}
                for i, value in enumerate(values, start=1)
            ],
        }
    )


@pytest.mark.parametrize("op", ["equals", "in"])
def test_a_string_equals_itself_however_its_sender_escaped_it(stores, op) -> None:  # type: ignore[no-untyped-def]
    """Strings are compared as JSON text in SQL: each tricky string, written by each writer, equals itself and
    only itself, whatever the escaping; a number or boolean of the same text does not."""
    values: list[Any] = _TRICKY if op == "equals" else [["zz", s] for s in _TRICKY]
    documents: list[dict[str, Any]] = [{"k": s} for s in _TRICKY] + [{"k": 1}, {"k": True}, {"k": None}, {}]
    events = [(d, w) for d in documents for w in range(len(_WRITERS))]
    assigned, expected = _assigned(stores, _one_rule_per_value(op, values), _documents(events))
    assert assigned == expected
    assert expected[: len(_TRICKY) * len(_WRITERS)] == [i for i in range(1, len(_TRICKY) + 1) for _ in _WRITERS]


def test_a_definition_naming_a_string_no_event_can_hold_is_refused() -> None:
    """A lone surrogate (YAML can spell one; no event can hold one, and ClickHouse would read its JSON escape as
    '', a missing value's text) is refused where a map or segment is validated, naming the field."""
    with pytest.raises(DefinitionError) as refused:
        _one_rule_per_value("equals", ["\ud800"])
    assert refused.value.problems == [
        {
            "path": "touchpoints[0].match.where[0].value",
            "reason": "not valid text (a lone UTF-16 surrogate, such as \\ud800)",
        }
    ]
    with pytest.raises(DefinitionError) as refused:
        validate_segment({"name": "odd", "rules": [{"field": "first_channel", "op": "in", "value": ["web", "\udfff"]}]})
    assert [p["path"] for p in refused.value.problems] == ["rules[0].value[1]"]
    with pytest.raises(DefinitionError):
        validate_segment({"name": "odd", "rules": [{"field": "traits.\ud800", "op": "exists"}]})
    with pytest.raises(DefinitionError) as refused:  # a key: named by where it is, so the error is text itself
        validate_map({"name": "m", "stages": [{"id": "s", "name": "S", "\ud800": 1}], "touchpoints": []})
    assert refused.value.problems == [
        {"path": "stages[0]", "reason": "a key here is not valid text (a lone UTF-16 surrogate)"}
    ]
    orjson.dumps(refused.value.problems)
