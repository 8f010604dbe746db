"""Journey maps and segments: validation, templates, versioned storage, REST and CLI round trips."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from query import definitions
from journeys.keys import add_key, create_project
from query.maps import map_warnings, DefinitionError, validate_map, validate_segment
from testkit.service import journeys, stop_leftover_postgres
from support import basic

GOOD_MAP: dict[str, Any] = {
    "name": "retail",
    "stages": [
        {"id": "aware", "name": "Aware", "target": {"conversion_rate": 0.3}},
        {"id": "buy", "name": "Buy", "conversion_window_days": 60},
    ],
    "touchpoints": [
        {"id": "ad", "stage": "aware", "match": {"channel": "ads"}},
        {
            "id": "pos",
            "stage": "buy",
            "match": {"event": ["Store Purchase"], "where": [{"property": "total", "op": ">", "value": 0}]},
            "sentiment": {"property": "rating", "positive_at_least": 4, "negative_at_most": 2},
        },
    ],
}


def _problems(document, validate=validate_map):  # type: ignore[no-untyped-def]
    with pytest.raises(DefinitionError) as caught:
        validate(document)
    return {(p["path"], p["reason"]) for p in caught.value.problems}


def _with(**changes):  # type: ignore[no-untyped-def]
    doc = copy.deepcopy(GOOD_MAP)
    doc.update(changes)
    return doc


def test_a_good_map_validates_and_orders_its_stages() -> None:
    journey_map = validate_map(GOOD_MAP)
    assert journey_map.ordered_stage_ids() == ["aware", "buy"]
    assert journey_map.stages[0].conversion_window_days == 30  # default


@pytest.mark.parametrize(
    "document,path,reason_part",
    [
        (_with(stages=[]), "stages", "at least one stage"),
        (
            _with(stages=[{"id": "a", "name": "A"}, {"id": "a", "name": "B"}], touchpoints=[]),
            "stages[1].id",
            "duplicate stage id 'a'",
        ),
        (_with(stages=[{"id": "Not A Slug", "name": "A"}], touchpoints=[]), "stages[0].id", "lowercase"),
        (
            _with(touchpoints=[{"id": "t", "stage": "nope", "match": {"channel": "web"}}]),
            "touchpoints[0].stage",
            "unknown stage 'nope'",
        ),
        (
            _with(
                touchpoints=[
                    {"id": "t", "stage": "aware", "match": {"where": [{"property": "x", "op": "like", "value": 1}]}}
                ]
            ),
            "touchpoints[0].match.where[0].op",
            "unknown operator 'like'",
        ),
        (
            _with(
                touchpoints=[
                    {"id": "t", "stage": "aware", "match": {"where": [{"property": "x", "op": "in", "value": "a"}]}}
                ]
            ),
            "touchpoints[0].match.where[0].value",
            "non-empty list",
        ),
        (
            _with(
                touchpoints=[
                    {"id": "t", "stage": "aware", "match": {"where": [{"property": "x", "op": ">=", "value": "4"}]}}
                ]
            ),
            "touchpoints[0].match.where[0].value",
            "must be a number",
        ),
        (
            _with(
                touchpoints=[
                    {"id": "t", "stage": "aware", "match": {"where": [{"property": "x", "op": "exists", "value": 1}]}}
                ]
            ),
            "touchpoints[0].match.where[0].value",
            "takes no value",
        ),
        (_with(touchpoints=[{"id": "t", "stage": "aware", "match": {}}]), "touchpoints[0].match", "at least one of"),
        (
            _with(
                touchpoints=[
                    {"id": "t", "stage": "aware", "match": {"channel": "web"}},
                    {"id": "t", "stage": "aware", "match": {"channel": "web"}},
                ]
            ),
            "touchpoints[1].id",
            "duplicate touchpoint",
        ),
        (
            _with(
                touchpoints=[
                    {
                        "id": "t",
                        "stage": "aware",
                        "match": {"channel": "web"},
                        "sentiment": {"property": "r", "positive_at_least": 2, "negative_at_most": 3},
                    }
                ]
            ),
            "touchpoints[0].sentiment",
            "below positive_at_least",
        ),
        (
            _with(touchpoints=[{"id": "t", "stage": "aware", "match": {"channel": "web"}, "sentiment": "ecstatic"}]),
            "touchpoints[0].sentiment",
            "positive",
        ),
        (
            _with(
                stages=[{"id": "a", "name": "A", "after": "b"}, {"id": "b", "name": "B", "after": "a"}], touchpoints=[]
            ),
            "stages[0].after",
            "ordering cycle: a → b → a",
        ),
        (
            _with(stages=[{"id": "a", "name": "A", "after": "zz"}], touchpoints=[]),
            "stages[0].after",
            "unknown stage 'zz'",
        ),
        (
            _with(stages=[{"id": "a", "name": "A", "target": {"conversion_rate": 1.5}}], touchpoints=[]),
            "stages[0].target.conversion_rate",
            "less than or equal to 1",
        ),
        (_with(colour="blue"), "colour", "unknown key 'colour'"),
        (_with(name="Bad Name"), "name", "lowercase"),
        ([1, 2], "(document)", "must be a mapping"),
    ],
)
def test_every_map_problem_is_named_with_its_path(document, path, reason_part) -> None:  # type: ignore[no-untyped-def]
    problems = _problems(document)
    assert any(p == path and reason_part in r for p, r in problems), problems


def test_all_problems_are_reported_at_once() -> None:
    problems = _problems(
        _with(
            stages=[{"id": "a", "name": "A"}, {"id": "a", "name": "B"}],
            touchpoints=[{"id": "t", "stage": "x", "match": {}}],
        )
    )
    assert {p for p, _ in problems} == {"stages[1].id", "touchpoints[0].stage", "touchpoints[0].match"}


def test_explicit_ordering_rearranges_stages() -> None:
    doc = _with(
        stages=[
            {"id": "c", "name": "C", "after": "b"},
            {"id": "a", "name": "A"},
            {"id": "b", "name": "B", "after": "a"},
        ],
        touchpoints=[],
    )
    assert validate_map(doc).ordered_stage_ids() == ["a", "b", "c"]


@pytest.mark.parametrize(
    "rules,path,reason_part",
    [
        ([], "rules", "at least one rule"),
        ([{"field": "plan", "op": "equals", "value": "b2b"}], "rules[0].field", "unknown field 'plan'"),
        ([{"field": "traits.country", "op": "in", "value": []}], "rules[0].value", "non-empty list"),
        ([{"field": "traits.age", "op": "between", "value": 1}], "rules[0].op", "unknown operator"),
        ([{"field": "first_seen", "op": ">=", "value": "2026-13-01"}], "rules[0].value", "ISO dates"),
        ([{"field": "first_seen", "op": "contains", "value": "2026"}], "rules[0].op", "first_seen is a date"),
    ],
)
def test_every_segment_problem_is_named(rules, path, reason_part) -> None:  # type: ignore[no-untyped-def]
    problems = _problems({"name": "s", "rules": rules}, validate_segment)
    assert any(p == path and reason_part in r for p, r in problems), problems


def test_segment_names_all_and_star_are_reserved() -> None:
    assert any(
        "reserved" in r
        for _, r in _problems({"name": "all", "rules": [{"field": "first_channel", "op": "exists"}]}, validate_segment)
    )


def test_good_segments_validate() -> None:
    segment = validate_segment(
        {
            "name": "b2b-dach",
            "rules": [
                {"field": "traits.plan", "op": "equals", "value": "b2b"},
                {"field": "traits.country", "op": "in", "value": ["DE", "AT", "CH"]},
                {"field": "first_channel", "op": "equals", "value": "store"},
                {"field": "first_seen", "op": ">=", "value": "2026-01-01"},
            ],
        }
    )
    assert segment.match == "all" and len(segment.rules) == 4


@pytest.mark.parametrize(
    "name,stages",
    [
        ("five-stage", ["awareness", "consideration", "purchase", "retention", "advocacy"]),
        ("5a", ["aware", "appeal", "ask", "act", "advocate"]),
        (
            "b2b",
            [
                "awareness",
                "interest",
                "evaluation",
                "trial",
                "negotiation",
                "purchase",
                "onboarding",
                "expansion",
                "advocacy",
            ],
        ),
    ],
)
def test_templates_load_and_validate(name: str, stages: list[str]) -> None:
    text = resources.files("cli").joinpath("templates", f"{name}.yaml").read_text()
    journey_map = validate_map(yaml.safe_load(text))
    assert journey_map.ordered_stage_ids() == stages
    channels = set()
    for tp in journey_map.touchpoints:
        value = tp.match.channel
        channels.update(value if isinstance(value, list) else [value] if value else [])
    assert {"web", "email", "store", "ads", "social", "call_centre"} <= channels
    assert map_warnings(journey_map) == []  # every rule of a template can match


def test_a_rule_an_earlier_one_always_shadows_is_warned_about_not_refused() -> None:
    """The first matching rule wins: the five-stage template's repeat-order rule used to sit below the
    first-order rules and could not see a repeat order placed on web, app or in a store."""
    stages = [{"id": "buy", "name": "Buy"}, {"id": "again", "name": "Again"}]
    repeat = {
        "id": "repeat",
        "stage": "again",
        "match": {"event": ["Order Completed", "Store Purchase"], "where": [{"property": "n", "op": ">=", "value": 2}]},
    }
    journey_map = validate_map(
        {
            "name": "m",
            "stages": stages,
            "touchpoints": [
                {"id": "order", "stage": "buy", "match": {"event": "Order Completed"}},
                repeat,
                {"id": "web-order", "stage": "buy", "match": {"event": "Order Completed", "channel": "web"}},
                {
                    "id": "narrower",
                    "stage": "buy",
                    "match": {"event": "Order Completed", "where": [{"property": "x", "op": "exists"}]},
                },
                {"id": "unrelated", "stage": "again", "match": {"event": "Review"}},
            ],
        }
    )
    warnings = {w["path"]: w["reason"] for w in map_warnings(journey_map)}
    assert set(warnings) == {"touchpoints[1].match.event", "touchpoints[2]", "touchpoints[3]"}, warnings
    assert (
        "'repeat' never matches 'Order Completed' events: 'order' comes first" in warnings["touchpoints[1].match.event"]
    )
    assert "'web-order' can never match: 'order' comes first" in warnings["touchpoints[2]"]
    # Moving the narrower rule first is what the warning says to do: then nothing is shadowed.
    fixed = validate_map(
        {
            "name": "m",
            "stages": stages,
            "touchpoints": [repeat, {"id": "order", "stage": "buy", "match": {"event": "Order Completed"}}],
        }
    )
    assert map_warnings(fixed) == []


async def test_versioning_round_trip(stores, project) -> None:  # type: ignore[no-untyped-def]
    async with stores.pg.acquire() as conn:
        first = await definitions.apply(conn, project.id, "map", GOOD_MAP)
        assert (first.version, first.previous_version, first.changed) == (1, None, True)
        assert "+name: retail" in first.diff
        same = await definitions.apply(conn, project.id, "map", copy.deepcopy(GOOD_MAP))
        assert (same.version, same.changed, same.diff) == (1, False, "")
        changed_doc = copy.deepcopy(GOOD_MAP)
        changed_doc["stages"][0]["target"]["conversion_rate"] = 0.5
        second = await definitions.apply(conn, project.id, "map", changed_doc)
        assert (second.version, second.previous_version) == (2, 1)
        assert "-    conversion_rate: 0.3\n+    conversion_rate: 0.5" in second.diff
        old = await definitions.get(conn, project.id, "map", "retail", version=1)
        assert old is not None and old.body["stages"][0]["target"]["conversion_rate"] == 0.3
        latest = await definitions.get(conn, project.id, "map", "retail")
        assert latest is not None and latest.version == 2
        assert [v for v, _ in await definitions.versions(conn, project.id, "map", "retail")] == [1, 2]
        with pytest.raises(DefinitionError):
            await definitions.apply(conn, project.id, "map", _with(stages=[]))
        assert [v for v, _ in await definitions.versions(conn, project.id, "map", "retail")] == [1, 2]


async def test_rest_read_with_read_key_write_with_admin_key(http, query, stores, project) -> None:  # type: ignore[no-untyped-def]
    async with stores.pg.acquire() as conn:
        admin = await add_key(conn, project.id, "admin")
        other = await create_project(conn, f"other-maps-{project.id}")
    url = lambda path: query.make_url(path)  # noqa: E731
    body = orjson.dumps(GOOD_MAP)
    async with http.put(url("/v1/maps/retail"), data=body, headers=basic(project.read_key)) as resp:
        assert resp.status == 403 and "cannot change" in (await resp.json())["errors"][0]["reason"]
    async with http.put(url("/v1/maps/retail"), data=body, headers=basic(admin)) as resp:
        created = await resp.json()
        assert resp.status == 201 and created["version"] == 1 and created["warnings"] == []
    shadowed = {**GOOD_MAP, "touchpoints": [*GOOD_MAP["touchpoints"], {**GOOD_MAP["touchpoints"][0], "id": "again"}]}
    async with http.put(
        url("/v1/maps/shadowed"), data=orjson.dumps({**shadowed, "name": "shadowed"}), headers=basic(admin)
    ) as resp:
        answer = await resp.json()
        assert resp.status == 201 and [w["path"] for w in answer["warnings"]] == [
            f"touchpoints[{len(GOOD_MAP['touchpoints'])}]"
        ]
    yaml_doc = yaml.safe_dump(_with(description="now with a description"))
    async with http.put(
        url("/v1/maps/retail"), data=yaml_doc, headers={**basic(admin), "Content-Type": "application/yaml"}
    ) as resp:
        applied = await resp.json()
        assert (
            resp.status == 200 and applied["version"] == 2 and "+description: now with a description" in applied["diff"]
        )
    async with http.put(
        url("/v1/maps/retail"),
        data=orjson.dumps(_with(touchpoints=[{"id": "t", "stage": "x", "match": {}}])),
        headers=basic(admin),
    ) as resp:
        errors = (await resp.json())["errors"]
        assert resp.status == 400 and {e["field"] for e in errors} == {"touchpoints[0].stage", "touchpoints[0].match"}
    async with http.put(url("/v1/maps/other-name"), data=body, headers=basic(admin)) as resp:
        assert resp.status == 400 and (await resp.json())["errors"][0]["field"] == "name"
    async with http.put(url("/v1/maps/retail"), data=b"{nope", headers=basic(admin)) as resp:
        assert resp.status == 400 and (await resp.json())["errors"][0]["field"] == "body"

    async with http.get(url("/v1/maps/retail"), headers=basic(project.read_key)) as resp:
        got = await resp.json()
        assert (
            resp.status == 200 and got["version"] == 2 and got["definition"]["description"] == "now with a description"
        )
    async with http.get(url("/v1/maps/retail?version=1"), headers=basic(project.read_key)) as resp:
        assert (await resp.json())["definition"]["description"] == ""
    async with http.get(url("/v1/maps/retail?version=x"), headers=basic(project.read_key)) as resp:
        assert resp.status == 400 and (await resp.json())["errors"][0]["field"] == "version"
    async with http.get(url("/v1/maps/retail/versions"), headers=basic(project.read_key)) as resp:
        assert [v["version"] for v in (await resp.json())["versions"]] == [1, 2]
    async with http.get(url("/v1/maps"), headers=basic(project.read_key)) as resp:
        assert [(i["name"], i["version"]) for i in (await resp.json())["items"]] == [("retail", 2), ("shadowed", 1)]
    async with http.get(url("/v1/maps/retail"), headers=basic(other.read_key)) as resp:
        assert resp.status == 404  # another project's key sees nothing
    async with http.get(url("/v1/maps/retail"), headers=basic(project.write_key)) as resp:
        assert resp.status == 403

    segment = {"rules": [{"field": "traits.plan", "op": "equals", "value": "b2b"}]}
    async with http.put(url("/v1/segments/b2b"), data=orjson.dumps(segment), headers=basic(admin)) as resp:
        assert resp.status == 201
    async with http.get(url("/v1/segments/b2b"), headers=basic(project.read_key)) as resp:
        assert (await resp.json())["definition"]["rules"][0]["value"] == "b2b"


@pytest.fixture
def cli_dir(tmp_path: Path):  # type: ignore[no-untyped-def]
    yield tmp_path
    stop_leftover_postgres(tmp_path)


@pytest.mark.slow
def test_cli_template_apply_show_list(cli_dir: Path) -> None:
    assert journeys(cli_dir, "project", "create", "shop").returncode == 0
    template = journeys(cli_dir, "map", "template", "five-stage")
    assert template.returncode == 0 and "name: five-stage" in template.stdout
    path = cli_dir / "map.yaml"
    path.write_text(template.stdout)
    first = journeys(cli_dir, "map", "apply", str(path), "--project", "shop")
    assert first.returncode == 0 and "created, version 1" in first.stdout
    # A summary of what was created, not the whole document as a diff.
    assert "5 stages (Awareness → Consideration → Purchase → Retention → Advocacy)" in first.stdout
    assert "+name: five-stage" not in first.stdout and len(first.stdout.splitlines()) == 2
    again = journeys(cli_dir, "map", "apply", str(path), "--project", "shop")
    assert again.stdout.strip() == "map five-stage unchanged (version 1)"
    path.write_text(template.stdout.replace("conversion_rate: 0.3,", "conversion_rate: 0.45,"))
    second = journeys(cli_dir, "map", "apply", str(path), "--project", "shop")
    assert "version 1 → version 2" in second.stdout and "+    conversion_rate: 0.45" in second.stdout
    shown = journeys(cli_dir, "map", "show", "five-stage", "--project", "shop", "--version", "1")
    assert "conversion_rate: 0.3\n" in shown.stdout
    assert "five-stage\tversion 2" in journeys(cli_dir, "map", "list", "--project", "shop").stdout
    assert "warning" not in first.stderr
    shadow = template.stdout.replace("name: five-stage", "name: shadowed") + (
        "  - {id: late-ad, stage: consideration, match: {channel: ads}}\n"
    )
    path.write_text(shadow)
    warned = journeys(cli_dir, "map", "apply", str(path), "--project", "shop")
    assert (
        warned.returncode == 0
        and "warning:" in warned.stderr
        and "'late-ad' can never match: 'ad-view'" in warned.stderr
    )
    path.write_text("name: broken\nstages: []\n")
    bad = journeys(cli_dir, "map", "apply", str(path), "--project", "shop")
    assert bad.returncode == 1 and "stages: a map needs at least one stage" in bad.stderr
    path.write_text(template.stdout.replace("name: five-stage", "nmae: five-stage"))
    typo = journeys(cli_dir, "map", "apply", str(path), "--project", "shop")
    assert typo.returncode == 1 and "nmae: unknown key 'nmae': did you mean 'name'?" in typo.stderr, typo.stderr
    path.write_text("name: broken\nstages:\n  - id: a\n   name: A\n")  # a bad indent on line 4
    unparsable = journeys(cli_dir, "map", "apply", str(path), "--project", "shop")
    assert (
        unparsable.returncode == 1 and f"{path}:4:" in unparsable.stderr and "unicode string" not in unparsable.stderr
    )
    missing = journeys(cli_dir, "map", "list", "--project", "nope")
    assert missing.returncode == 1 and "no project named 'nope'" in missing.stderr
    admin = journeys(cli_dir, "key", "create", "--project", "shop", "--kind", "admin")
    assert admin.returncode == 0 and admin.stdout.startswith("ja_")
